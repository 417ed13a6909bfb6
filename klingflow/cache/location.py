"""Where the remote cache is: its URL, checked, and whether this machine may write to it.

The URL names a place, never a credential: credentials and endpoints come from the
store's standard environment variables only (obstore reads them), so that nothing
secret ends up in a pipeline, a lock, a report, a log or a shell history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from klingflow.errors import UsageError

REMOTE_VARIABLE = "KLINGFLOW_REMOTE"
READ_ONLY_VARIABLE = "KLINGFLOW_REMOTE_READ_ONLY"
SCHEMES = ("s3", "gs", "az", "file", "memory")
CREDENTIALS_HINT = (
    "credentials come from the environment only: AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (s3://), GOOGLE_APPLICATION_CREDENTIALS (gs://), "
    "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY (az://)"
)
_EXPECTED = ("s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, "
             "file:///ABSOLUTE/PATH or memory://")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """A checked remote: `url` holds no credential and is safe to show."""

    url: str
    scheme: str
    read_only: bool = False


def remote_settings(environ: Mapping[str, str], *, url: str | None = None,
                    read_only: bool = False) -> RemoteSettings | None:
    """The remote from `--remote URL` (`url`) or KLINGFLOW_REMOTE; None when neither is set.

    `read_only` (`--remote-read-only`) or KLINGFLOW_REMOTE_READ_ONLY=1 keeps this
    machine from writing anything to it.
    """
    source = "--remote" if url else REMOTE_VARIABLE
    url = url or environ.get(REMOTE_VARIABLE, "").strip()
    if not url:
        return None
    scheme = check_remote_url(url, source=source)
    return RemoteSettings(url, scheme, read_only or _read_only(environ))


def check_remote_url(url: str, *, source: str) -> str:
    """`url`'s scheme, once it is known to be one we support and to hold no secret.

    Raises UsageError (exit 2) naming `source`; the message never repeats a
    user name, password or query, which may be credentials.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise UsageError(f"{source}: the value is not a URL; expected {_EXPECTED}")
    shown = display_url(url)
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{source}: {shown} must not hold a user name or password; "
                         f"{CREDENTIALS_HINT}")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise UsageError(f"{source}: {shown} must not hold a query string (it may be a "
                         f"signature or a key); {CREDENTIALS_HINT}")
    if scheme not in SCHEMES:
        raise UsageError(f"{source}: {shown} is not a supported remote; expected {_EXPECTED}")
    if scheme in ("s3", "gs", "az") and not parts.hostname:
        raise UsageError(f"{source}: {shown} names no bucket; expected {scheme}://BUCKET/PREFIX")
    if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise UsageError(f"{source}: {shown} is not an absolute file URL; expected "
                         "file:///ABSOLUTE/PATH (three slashes)")
    return scheme


def display_url(url: str) -> str:
    """`url` without user name, password, query or fragment: safe for any message."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def _read_only(environ: Mapping[str, str]) -> bool:
    value = environ.get(READ_ONLY_VARIABLE, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{READ_ONLY_VARIABLE}: {value!r} is not one of 1, 0, true, false, "
                     "yes, no")
