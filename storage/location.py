"""Store locations: URL checks, the fsspec filesystem behind a URL, and keeping credentials out of text.

A location is a recipe (URL + storage options), never a live connection: it pickles as its arguments,
so it travels to Dask workers and reconnects there, as fsspec filesystems do.
"""

from __future__ import annotations

import os
import re
from typing import Any

from supergen.errors import SupergenError

# storage_options keys whose values are secrets (fsspec/s3fs/gcsfs/adlfs spellings)
_SECRET_KEYS = re.compile(r"(secret|token|password|passwd|key$|^key|credential|sas|signature)", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")


class StoreError(SupergenError, ValueError):
    """The render store cannot be used as asked (bad URL, missing bucket, denied write, wrong spec...)."""


def secrets(storage_options: dict[str, Any] | None) -> list[str]:
    """Every credential string that must never be printed: secret-looking options and the standard
    environment variables the credential chain reads."""
    out = [str(v) for k, v in (storage_options or {}).items() if _SECRET_KEYS.search(k) and v]
    out += [os.environ[k] for k in _SECRET_ENV if os.environ.get(k)]
    return [s for s in out if len(s) >= 4]


def redact(text: str, storage_options: dict[str, Any] | None = None) -> str:
    for s in sorted(secrets(storage_options), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def normalize(url: str) -> str:
    """A URL with a protocol: plain paths become absolute file:// URLs. Raises StoreError if unusable."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError("the store URL is empty: give a path, file://, memory:// or s3://bucket/prefix")
    url = url.strip()
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://(.*)$", url)
    if m is None:
        if "://" in url or url.startswith(":"):
            raise StoreError(f"cannot parse store URL {url!r}")
        return "file://" + os.path.abspath(os.path.expanduser(url))
    protocol, rest = m.group(1).lower(), m.group(2)
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise StoreError(f"unknown storage protocol {protocol!r} in {url!r}; known: "
                         f"{sorted(fsspec.available_protocols())[:12]}...") from None
    except ImportError as e:
        raise StoreError(f"the {protocol!r} protocol needs a package that is not installed: {e}") from None
    if protocol not in ("file", "memory") and not rest.strip("/"):
        raise StoreError(f"store URL {url!r} names no bucket or container")
    if protocol == "file":
        rest = os.path.abspath(rest)
    return f"{protocol}://{rest.rstrip('/')}"


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(fs, root path) for a normalized URL."""
    from fsspec.core import url_to_fs

    opts = dict(storage_options or {})
    if url.startswith("file://"):
        opts.setdefault("auto_mkdir", True)
    try:
        return url_to_fs(url, **opts)
    except Exception as e:  # bad options, missing profile, ...
        raise StoreError(redact(f"cannot open {url!r}: {type(e).__name__}: {e}", storage_options)) from None


def bucket_of(url: str) -> str | None:
    m = re.match(r"^(s3|s3a|gs|gcs|az|abfs)://([^/]+)", url)
    return m.group(2) if m else None
