"""Test-only hook, loaded by Python at start-up when this folder is on PYTHONPATH.

firebase-admin fetches the ID-token signing certificates from `_token_gen.ID_TOKEN_CERT_URI` (Google's URL).
The auth tests start the API with PYTHONPATH=<this folder> and COMFYFLEET_TEST_ID_TOKEN_CERT_URL pointing at a
loopback server holding a locally generated certificate, so expired and forged tokens meet the real
signature and expiry checks (the Auth emulator would skip both).
"""

import os

_url = os.environ.get("COMFYFLEET_TEST_ID_TOKEN_CERT_URL")
if _url:
    import firebase_admin._token_gen as _token_gen

    _token_gen.ID_TOKEN_CERT_URI = _url
