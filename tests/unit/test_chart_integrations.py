"""Chart values of the integrations: the S3 output store and webhooks reach the API and dispatcher as settings,
credentials and the signing secret only through Secrets."""

from __future__ import annotations

from pathlib import Path

from tests.unit import test_chart as chart


def test_s3_and_webhook_values_become_settings(tmp_path: Path) -> None:
    values = {
        "s3": {"enabled": True, "bucket": "outs", "prefix": "gen", "region": "auto",
               "endpointUrl": "https://acct.r2.cloudflarestorage.com", "pathStyle": True, "urlExpirySeconds": 3600,
               "credentials": {"existingSecret": "s3-keys"}},
        "webhooks": {"existingSecret": "hooks", "allowHosts": ["hooks.internal", "10.0.0.0/8"],
                     "retryWindowSeconds": 600},
    }
    objects = chart.render("-f", chart.values_file(tmp_path, values))
    for name in ("cf-comfyfleet-api", "cf-comfyfleet-dispatcher"):
        env = chart.env_of(chart.by_kind_name(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0])
        plain = {k: v.get("value") for k, v in env.items()}
        assert plain["COMFYFLEET_OUTPUT_STORE"] == "s3" and plain["COMFYFLEET_S3_BUCKET"] == "outs"
        assert plain["COMFYFLEET_S3_PREFIX"] == "gen" and plain["COMFYFLEET_S3_REGION"] == "auto"
        assert plain["COMFYFLEET_S3_ENDPOINT_URL"] == "https://acct.r2.cloudflarestorage.com"
        assert plain["COMFYFLEET_S3_PATH_STYLE"] == "true" and plain["COMFYFLEET_STORAGE_URL_EXPIRY_SECONDS"] == "3600"
        assert env["COMFYFLEET_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-keys",
                                                                                  "key": "access-key-id"}
        assert env["COMFYFLEET_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-access-key"
        assert env["COMFYFLEET_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "hooks",
                                                                                "key": "webhook-secret"}
        assert plain["COMFYFLEET_OUTBOUND_ALLOW_HOSTS"] == "hooks.internal,10.0.0.0/8"
        assert plain["COMFYFLEET_WEBHOOK_RETRY_WINDOW_SECONDS"] == "600"


def test_defaults_keep_local_outputs_and_webhooks_off(default_objects: list) -> None:  # noqa: ANN001
    api = chart.by_kind_name(default_objects, "Deployment", "cf-comfyfleet-api")
    env = chart.env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert "COMFYFLEET_WEBHOOK_SECRET" not in env and "COMFYFLEET_S3_BUCKET" not in env
    assert env.get("COMFYFLEET_OUTPUT_STORE", {}).get("value", "local") == "local"


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    proc = chart.helm("template", "cf", str(chart.CHART), "-f", chart.values_file(tmp_path, {"s3": {"enabled": True}}))
    assert proc.returncode != 0 and "bucket" in proc.stderr


default_objects = chart.default_objects
