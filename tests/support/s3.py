"""A real S3-compatible server for tests: moto in server mode (`python -m moto.server`), one per test."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.procs import ManagedProcess, free_port, python_module, wait_for

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"  # noqa: S105 - moto accepts any credentials; they only have to be consistent


class S3Server:
    def __init__(self, tmp: Path):
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = ManagedProcess(python_module("moto.server", "-H", "127.0.0.1", "-p", str(self.port)),
                                   log_path=tmp / "moto.log")
        wait_for(lambda: httpx.get(self.url + "/moto-api/", timeout=2).status_code < 500, timeout=30,
                 what="moto S3 server")

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def env(self, bucket: str) -> dict[str, str]:
        """The comfyfleet settings that point the S3 output store at this server."""
        return {"COMFYFLEET_OUTPUT_STORE": "s3", "COMFYFLEET_S3_BUCKET": bucket,
                "COMFYFLEET_S3_ENDPOINT_URL": self.url, "COMFYFLEET_S3_REGION": "us-east-1",
                "COMFYFLEET_S3_ACCESS_KEY_ID": ACCESS_KEY, "COMFYFLEET_S3_SECRET_ACCESS_KEY": SECRET_KEY,
                "COMFYFLEET_S3_PATH_STYLE": "true"}

    def stop(self) -> None:
        self.proc.stop()
