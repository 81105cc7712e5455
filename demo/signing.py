"""The shared secret and the request signature that the app and the hub agree on.

Events are signed the way webhook providers do it: an HMAC-SHA256 of the exact request body,
keyed with a shared secret, sent hex-encoded in a header. The secret itself never travels and is
never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = [
    "DEFAULT_SECRET",
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "load_secret",
    "secret_source",
    "sign",
    "verify",
]

# Not ASYNCBRIDGE_DEMO_SECRET: asyncbridge reads every ASYNCBRIDGE_<NAME> variable as an option
# and warns about names it does not know.
SECRET_ENV = "DEMO_SECRET"
DEFAULT_SECRET = "asyncbridge-demo-secret"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def load_secret() -> bytes:
    """The shared secret: ``$DEMO_SECRET``, or the demo default when unset or empty."""
    return (os.environ.get(SECRET_ENV) or DEFAULT_SECRET).encode()


def secret_source() -> str:
    """Where the secret came from, safe to print (never the secret itself)."""
    if os.environ.get(SECRET_ENV):
        return f"${SECRET_ENV}"
    return f"the demo default (set ${SECRET_ENV} to change it)"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant-time)."""
    if not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body), header)
