"""Store locations: strict URL parsing, the fsspec filesystem behind a URL, access probes that name the
real cause of a failure, and keeping credentials out of text.

A location is a recipe (URL + storage options), never a live connection: it pickles as its arguments,
so it travels to Dask workers and reconnects there, as fsspec filesystems do.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from supergen.errors import SupergenError

# storage_options keys whose values are secrets (fsspec/s3fs/gcsfs/adlfs spellings)
_SECRET_KEYS = re.compile(r"(secret|token|password|passwd|key$|^key|credential|sas|signature)", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_KEY",
               "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):(.*)$", re.S)
_S3_BUCKET = re.compile(r"^(?=.{3,63}$)[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
PROBE_TIMEOUT_S = 3.0  # an endpoint that takes no TCP connection within this is reported unreachable


class StoreError(SupergenError, ValueError):
    """The render store cannot be used as asked (bad URL, missing bucket, denied write, wrong spec...)."""


class StoreBusy(StoreError):
    """Another live render owns the store."""


class StoreNotFound(StoreError, FileNotFoundError):
    """No render store at the URL; also a FileNotFoundError, as zarr's NodeNotFoundError is."""


# What a backend raises for "not there": fsspec's FileNotFoundError (zarr's NodeNotFoundError is one too) and
# the KeyError of a missing Zarr member. Anything else (denied, unreachable) is an error, never "missing".
MISSING = (FileNotFoundError, KeyError)


def secrets(storage_options: dict[str, Any] | None) -> list[str]:
    """Every credential string that must never be printed: secret-looking options and the standard
    environment variables the credential chain reads."""
    out = [str(v) for k, v in (storage_options or {}).items() if _SECRET_KEYS.search(k) and v]
    out += [os.environ[k] for k in _SECRET_ENV if os.environ.get(k)]
    return [s for s in out if len(s) >= 4]


def split_secrets(storage_options: dict[str, Any] | None) -> tuple[dict, dict]:
    """(public, secret) options: what may be shown or persisted, and what may not."""
    public, secret = {}, {}
    for k, v in (storage_options or {}).items():
        (secret if _SECRET_KEYS.search(k) else public)[k] = v
    return public, secret


def redact(text: str, storage_options: dict[str, Any] | None = None) -> str:
    for s in sorted(secrets(storage_options), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def normalize(url: str, bucket_root: bool = False) -> str:
    """A canonical URL with a protocol: plain paths become absolute file:// URLs.

    Strict, because a lenient parse renders somewhere the user did not mean: `s3:/b/x` or `s3:b/x` would
    otherwise be a local folder named `s3:`, and `s3://b` the root of a whole bucket (refused unless
    `bucket_root`). Raises StoreError naming what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError("the store URL is empty: give a path, file://, memory:// or s3://bucket/prefix")
    url = url.strip()
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise StoreError(f"store URL {url!r} contains whitespace or control characters")
    m = _SCHEME.match(url)
    if m is None or len(m.group(1)) == 1:  # no scheme (a Windows drive letter is one character)
        if url.startswith(":") or "://" in url:
            raise StoreError(f"cannot parse store URL {url!r}")
        return "file://" + os.path.abspath(os.path.expanduser(url))
    protocol, rest = m.group(1).lower(), m.group(2)
    if not rest.startswith("//"):
        if protocol in OBJECT_STORES + ("file", "memory"):
            raise StoreError(f"malformed store URL {url!r}: did you mean {protocol}://{rest.lstrip('/')}?")
        raise StoreError(f"store location {url!r} reads as a URL with scheme {protocol!r} but no '//'; "
                         f"for a local folder write ./{url}")
    rest = rest[2:]
    _check_protocol(protocol, url)
    if "?" in rest or "#" in rest:
        raise StoreError(f"store URL {url!r} has a query or fragment; storage options go in --storage-option")
    if protocol == "file":
        if not rest.startswith("/"):
            raise StoreError(f"file URL {url!r} is not absolute: write file:///absolute/path or a plain path")
        return "file://" + os.path.abspath(rest)
    if protocol == "memory":
        if not rest.strip("/"):
            raise StoreError(f"store URL {url!r} names no location")
        return f"memory://{rest.rstrip('/')}"
    parts = rest.rstrip("/").split("/")
    if not parts[0]:
        raise StoreError(f"store URL {url!r} names no bucket or container")
    if protocol in ("s3", "s3a") and not _S3_BUCKET.match(parts[0]):
        raise StoreError(f"store URL {url!r}: {parts[0]!r} is not a valid bucket name (3-63 characters: "
                         "lower-case letters, digits, dots and hyphens)")
    if any(p in ("", ".", "..") for p in parts[1:]):
        raise StoreError(f"store URL {url!r} has an empty, '.' or '..' path segment")
    if len(parts) == 1 and not bucket_root:
        raise StoreError(f"store URL {url!r} is the root of bucket {parts[0]!r}: a render writes many objects "
                         f"there; give a prefix ({protocol}://{parts[0]}/renders/NAME) or pass --bucket-root")
    return f"{protocol}://{'/'.join(parts)}"


def _check_protocol(protocol: str, url: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise StoreError(f"unknown storage protocol {protocol!r} in {url!r}; known: "
                         f"{sorted(fsspec.available_protocols())[:12]}...") from None
    except ImportError as e:
        hint = " (pip install 'supergen[s3]')" if protocol in ("s3", "s3a") else ""
        raise StoreError(f"the {protocol!r} protocol needs a package that is not installed{hint}: {e}") from None


def check_options(url: str, storage_options: dict[str, Any] | None) -> None:
    """Refuse option names the filesystem would not understand, before they fail late or are ignored."""
    import fsspec

    protocol = url.split("://", 1)[0]
    known = _known_options(fsspec.get_filesystem_class(protocol))
    if known is None:
        return
    unknown = sorted(set(storage_options or {}) - known)
    if unknown:
        raise StoreError(f"unknown storage option {unknown[0]!r} for {protocol}://; "
                         f"known: {', '.join(sorted(known))}")


def _known_options(cls) -> set[str] | None:
    """Keyword names the filesystem accepts: its classes' own up to fsspec's base, and for s3fs those of
    the aiobotocore session it hands the rest to. None where that is unknowable (other protocols)."""
    import fsspec.spec

    if cls.__name__ not in ("S3FileSystem", "LocalFileSystem", "MemoryFileSystem"):
        return None
    names = {"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"}
    for c in cls.__mro__:
        if "__init__" not in vars(c) or c is fsspec.spec.AbstractFileSystem:
            continue
        params = inspect.signature(c.__init__).parameters
        names |= {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    if cls.__name__ == "S3FileSystem":
        from aiobotocore.session import AioSession

        names |= set(inspect.signature(AioSession.__init__).parameters)
    return names - {"self", "args", "kwargs"}


def check_reachable(storage_options: dict[str, Any] | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A custom endpoint that takes no TCP connection is reported at once, with its URL and the timeout
    (the SDK's own retries would take ~30 s and then blame the bucket)."""
    endpoint = ((storage_options or {}).get("client_kwargs") or {}).get("endpoint_url") \
        or (storage_options or {}).get("endpoint_url")
    if not endpoint:
        return
    parts = urlsplit(endpoint)
    if not parts.hostname:
        raise StoreError(f"endpoint URL {endpoint!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    t0 = time.perf_counter()
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise StoreError(f"storage endpoint {endpoint} is unreachable: no TCP connection within {timeout:.0f} s "
                         f"({type(e).__name__}: {e}; {time.perf_counter() - t0:.1f} s)") from None


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(fs, root path) for a normalized URL."""
    from fsspec.core import url_to_fs

    check_options(url, storage_options)
    opts = dict(storage_options or {})
    if url.startswith("file://"):
        opts.setdefault("auto_mkdir", True)
    try:
        return url_to_fs(url, **opts)
    except Exception as e:  # bad options, missing profile, ...
        raise StoreError(redact(f"cannot open {url!r}: {describe(e)}", storage_options)) from None


def describe(e: BaseException) -> str:
    """The real cause of a storage failure in words: which credential is wrong, which profile is missing,
    which option is unknown, rather than the SDK's generic exception."""
    chain, c = [], e
    while c is not None and len(chain) < 6:
        chain.append(c)
        c = c.__cause__ or c.__context__
    text = " | ".join(f"{type(x).__name__}: {x}" for x in chain)
    causes = [
        (r"InvalidAccessKeyId|AWS Access Key Id you provided does not exist",
         "access denied: the access key id is not known to the endpoint (check the key / credentials)"),
        (r"SignatureDoesNotMatch|signature we calculated does not match",
         "access denied: the secret key does not match the access key id"),
        (r"ExpiredToken|token.*expired", "access denied: the session token has expired"),
        (r"ProfileNotFound|config profile \((.*?)\) could not be found",
         "unknown credentials profile (not in ~/.aws/config or ~/.aws/credentials)"),
        (r"NoCredentialsError|Unable to locate credentials", "no credentials found (environment, profile or "
                                                             "--storage-option key/secret)"),
        (r"unexpected keyword argument '(\w+)'", "unknown storage option"),
        (r"AccessDenied|Forbidden|403", "access denied: the credentials lack permission"),
        (r"EndpointConnectionError|Could not connect to the endpoint", "storage endpoint unreachable"),
    ]
    for pattern, words in causes:
        m = re.search(pattern, text)
        if m:
            detail = f" {m.group(1)!r}" if m.groups() and m.group(1) else ""
            return f"{words}{detail} ({type(e).__name__}: {str(e)[:200]})"
    return f"{type(e).__name__}: {e}"


def bucket_of(url: str) -> str | None:
    """The bucket (or container) of an object-store URL; None for other protocols."""
    protocol, sep, rest = url.partition("://")
    if not sep or protocol not in OBJECT_STORES:
        return None
    return rest.split("/", 1)[0] or None
