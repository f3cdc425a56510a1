"""Error types with an HTTP status and a public message.

Core code raises these; the API turns them into RFC 9457 problem details
(``{"type", "title", "status", "detail"}``). ``detail`` is safe to show a client.
"""

from __future__ import annotations


class SorterBotError(Exception):
    """Base of the project's errors.

    Parameters
    ----------
    detail : str
        What was wrong, for the client.
    """

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal-error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def to_problem(self) -> dict:
        """RFC 9457 problem details body."""
        return {"type": f"https://sorterbot.cloud/problems/{self.slug}", "title": self.title, "status": self.status, "detail": self.detail}


class BadRequest(SorterBotError):
    """A missing or malformed request parameter (400)."""

    status, title, slug = 400, "Bad request", "bad-request"


class InvalidImage(SorterBotError):
    """An empty, truncated or undecodable image body (400)."""

    status, title, slug = 400, "Invalid image", "invalid-image"


class UnsupportedMediaType(SorterBotError):
    """A body whose content type is not an accepted image type (415)."""

    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class PayloadTooLarge(SorterBotError):
    """A body over the configured size limit (413)."""

    status, title, slug = 413, "Payload too large", "payload-too-large"


class InvalidArmConstants(SorterBotError):
    """Malformed arm constants in a session trigger (422)."""

    status, title, slug = 422, "Invalid arm constants", "invalid-arm-constants"


class UnknownSession(SorterBotError):
    """A session with no stored frame (404)."""

    status, title, slug = 404, "Unknown session", "unknown-session"


class Unauthorized(SorterBotError):
    """A missing or wrong bearer token (401)."""

    status, title, slug = 401, "Unauthorized", "unauthorized"


class ServiceUnavailable(SorterBotError):
    """A dependency (database, object store) is not reachable (503)."""

    status, title, slug = 503, "Service unavailable", "service-unavailable"
