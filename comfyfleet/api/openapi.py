"""Print the API's OpenAPI schema as canonical JSON (what the TypeScript client's types are made from)."""

from __future__ import annotations

import json
import sys
from typing import Any


def schema() -> dict[str, Any]:
    from comfyfleet.api.app import create_app
    from comfyfleet.settings import ApiSettings, StaticToken

    # Building the app touches no server: Redis clients connect on first use.
    settings = ApiSettings(auth_mode="static", dev_mode=True,
                           api_tokens=[StaticToken(token="schema-only-0000", owner="x")], _env_file=None)
    return create_app(settings).openapi()


def canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(canonical(schema()))
