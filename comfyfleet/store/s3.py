"""Outputs in an S3-compatible bucket (AWS S3, GCS interop, MinIO, R2): `<prefix>/<owner>/<job id>/<file>`.

The key layout and the no-overwrite guarantee are the Firebase store's: every object is written with
`If-None-Match: *`, so an existing object is never replaced; when one is already there (a retried job attempt)
it is accepted only if it holds the same bytes (its ETag is the MD5 of a single-part upload). Downloads are
presigned GET URLs (SigV4) valid for `storage_url_expiry_seconds` (7 days at most, SigV4's limit).
Credentials come from COMFYFLEET_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY (a Secret) or the standard AWS chain.
"""

from __future__ import annotations

import hashlib
from typing import Any

from comfyfleet.jobs.model import InputFile, Job, OutputFile
from comfyfleet.settings import CommonSettings
from comfyfleet.store.firebase import object_metadata
from comfyfleet.store.outputs import StorageError, safe_name

# Connect/read timeouts per request and attempts (botocore's "standard" retry mode backs off on 5xx/throttling):
# a dead endpoint fails a job's store step in well under a minute instead of holding the pod's lease.
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
MAX_ATTEMPTS = 3


def object_key(prefix: str, owner: str, job_id: str, filename: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), safe_name(owner), safe_name(job_id), safe_name(filename)) if p)


def input_key(prefix: str, owner: str, job_id: str, name: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), safe_name(owner), safe_name(job_id), "inputs", safe_name(name))
                    if p)


def job_prefix(prefix: str, job: Job) -> str:
    return object_key(prefix, job.owner, job.id, "x")[:-1]


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class S3OutputStore:
    """Stores outputs and inputs in one bucket under a prefix; see the module docstring."""

    def __init__(self, client: Any, bucket: str, prefix: str = "generations", url_expiry_seconds: int = 3600):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url_expiry = url_expiry_seconds

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> S3OutputStore:
        import boto3  # optional dependency (comfyfleet[s3]), imported only when the S3 store is used
        from botocore.config import Config

        if not settings.s3_bucket:
            raise StorageError("COMFYFLEET_OUTPUT_STORE=s3 needs COMFYFLEET_S3_BUCKET")
        config = Config(signature_version="s3v4", connect_timeout=CONNECT_TIMEOUT_SECONDS,
                        read_timeout=READ_TIMEOUT_SECONDS, retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                        s3={"addressing_style": "path" if settings.s3_path_style else "auto"})
        creds = {"aws_access_key_id": settings.s3_access_key_id,
                 "aws_secret_access_key": settings.s3_secret_access_key} if settings.s3_access_key_id else {}
        client = boto3.client("s3", region_name=settings.s3_region, endpoint_url=settings.s3_endpoint_url or None,
                              config=config, **creds)
        return cls(client, settings.s3_bucket, settings.s3_prefix, settings.storage_url_expiry_seconds)

    def put(self, job: Job, node_id: str, filename: str, data: bytes, content_type: str) -> OutputFile:
        key = object_key(self.prefix, job.owner, job.id, filename)
        self._store(key, data, content_type, object_metadata(job, node_id))
        return OutputFile(filename=safe_name(filename), node_id=node_id, content_type=content_type, size=len(data),
                          key=key, url=self.url_of(key))

    def put_input(self, job: Job, name: str, data: bytes) -> InputFile:
        key = input_key(self.prefix, job.owner, job.id, name)
        self._store(key, data, "application/octet-stream", object_metadata(job))
        return InputFile(name=safe_name(name), key=key, size=len(data))

    def read(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body
        except ClientError as exc:
            raise StorageError(f"cannot read {key!r} from bucket {self.bucket}: {_code(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {key!r} from bucket {self.bucket}: {exc}") from None

    def delete_job(self, job: Job) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=job_prefix(self.prefix, job))
            for page in pages:
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot delete the outputs of job {job.id}: {exc}") from None

    def url_of(self, key: str) -> str:
        url: str = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                      ExpiresIn=self.url_expiry)
        return url

    def _store(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                   Metadata=metadata, IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                self._existing(key, data)
                return
            raise StorageError(f"upload of {key} to bucket {self.bucket} failed: {_code(exc)}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"upload of {key} to bucket {self.bucket} failed: {exc}") from None

    def _existing(self, key: str, data: bytes) -> None:
        """The object exists already (a retried attempt): fine with the same bytes, refused otherwise."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{key} exists in bucket {self.bucket} but cannot be read back: {exc}") from None
        if head.get("ETag", "").strip('"') != md5_hex(data) or head.get("ContentLength") != len(data):
            raise StorageError(f"{key} already exists in bucket {self.bucket} with different content; "
                               "refusing to overwrite it")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""
