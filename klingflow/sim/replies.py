"""Error replies of the simulated service: the documented texts, as data.

Texts quoted by useapi.net's pages are copied exactly (marked "doc"); the others
are the simulator's own wording, in the same style, for cases the docs name but do
not quote.
"""

from __future__ import annotations

from typing import Any

UNAUTHORIZED: dict[str, Any] = {"error": "Unauthorized", "code": 401}  # doc
NOT_FOUND: dict[str, Any] = {  # doc: an asset Kling cannot find
    "error": "Sorry, the requested resource was not found (VALID.ResourceNotFound)",
    "message": "Not Found",
}
MODERATION: dict[str, Any] = {  # doc
    "error": "The content you uploaded appears to violate the community guidelines. "
             "(CM_EXT.POther)",
    "message": "Service busy (CM_EXT.POther)",
}
SERVER_ERROR: dict[str, Any] = {"error": "Internal Server Error", "message": "Service busy"}
FAILED_MESSAGE = ("Generation failed: the content appears to violate the community "
                  "guidelines. (CM_EXT.POther)")
EXPIRED: dict[str, Any] = {"error": "Forbidden", "message": "Signature expired"}

ASSET_TYPES = ("image/png", "image/jpeg", "video/mp4", "video/quicktime", "audio/wav",
               "audio/wave", "audio/mpeg", "audio/mp4", "audio/flac", "audio/aac", "audio/ogg")


class SimError(Exception):
    """A reply other than 200: its HTTP status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}


def bad_request(text: str) -> SimError:
    return SimError(400, {"error": text})


def image_required() -> SimError:
    return bad_request("image or image_tail is required")  # doc


def effect_not_found(name: str, supported: list[str]) -> SimError:
    return bad_request(f"Effect {name} not found. Supported effects: {','.join(supported)}")  # doc


def unsupported_asset_type(content_type: str) -> SimError:
    return bad_request(f"Content-Type {content_type} is not supported. "  # doc
                       f"Valid values: {','.join(ASSET_TYPES)}")


def busy(max_jobs: int, email: str | None) -> SimError:
    who = f"account {email}" if email else "all configured accounts"
    return SimError(429, {"error": f"Maximum number of concurrent jobs reached for {who} "
                                   f"(maxJobs {max_jobs}), try again later", "code": 429})


def busy_everywhere() -> SimError:
    return SimError(429, {"error": "All configured accounts are busy, maximum number of "
                                   "concurrent jobs reached, try again later", "code": 429})


def email_required() -> SimError:
    return bad_request("email is required when more than one account is configured")


def account_unknown(email: str) -> SimError:
    return bad_request(f"Account {email} is not configured, add it with POST /accounts")


def value_not_allowed(field: str, value: object, allowed: object, *, model: str = "") -> SimError:
    where = f" for {model}" if model else ""
    return bad_request(f"Unsupported {field} {value}{where}. Supported values: {allowed}")


def too_long(field: str, length: int, limit: int) -> SimError:
    return bad_request(f"{field} is too long: {length} characters, maximum {limit}")
