"""Bearer-token access control.

When ``Settings.api_token`` is set (always in production), every route except the
paths in :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>`` (RFC 6750). Tokens
are compared with :func:`hmac.compare_digest`, whose run time does not depend on where
the first differing byte is. A missing or wrong token answers 401 with an RFC 9457
problem body and ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac

from ..errors import Unauthorized

#: Paths answered without a token: the load balancer's and Docker's health check.
OPEN_PATHS = frozenset({"/healthz"})


def token_of_header(header: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_bearer(header: str | None, expected_token: str) -> None:
    """Check an ``Authorization`` header value against ``expected_token``.

    Raises
    ------
    Unauthorized
        If the header is missing, not a bearer token, or holds another token.
    """
    token = token_of_header(header)
    if token is None:
        raise Unauthorized("this route needs an 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(token.encode("utf-8"), expected_token.encode("utf-8")):
        raise Unauthorized("the bearer token is not valid")
