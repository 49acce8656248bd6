"""Safe downloads: primary then backup URLs, timeouts, size/sha256 checks, atomic writes, zip members.

Nothing lands under its final name unless it was verified: bytes go to a temporary file beside the
destination and only a complete, checked file is renamed into place. A failed attempt removes its
temporary file, so the next call simply retries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions
from tqdm.auto import tqdm

from .errors import HfSpamError, UnavailableError, one_line
from .files import atomic_path

CHUNK_SIZE = 1 << 16


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def redact_url(url: str) -> str:
    """The URL without user:password, query and fragment, which may carry secrets (signed URLs, tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "…" if parts.query else "", ""))


def _mismatch(path: Path, sha256: str | None, size: int | None) -> str | None:
    """Why ``path`` does not match the expected size and sha256, or ``None`` when it does."""
    if size is not None and path.stat().st_size != size:
        return f"size {path.stat().st_size} bytes, expected {size}"
    if sha256 is not None and (actual := sha256_file(path)) != sha256.lower():
        return f"sha256 {actual}, expected {sha256.lower()}"
    return None


def _network_reason(err: requests.RequestException, timeout: float) -> str:
    """A short, secret-free reason for a requests failure (their own messages are long and nested)."""
    inner = err.args[0] if err.args else None  # a read timeout inside iter_content arrives wrapped
    if isinstance(err, requests.ConnectTimeout):
        return f"connection timed out after {timeout:g}s"
    if isinstance(err, requests.ReadTimeout) or isinstance(inner, urllib3.exceptions.ReadTimeoutError):
        return f"stalled: no data for {timeout:g}s"
    if isinstance(err, requests.exceptions.ChunkedEncodingError) or isinstance(inner, urllib3.exceptions.ProtocolError):
        return "truncated: connection closed before the end of the file"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS/SSL error"
    if isinstance(err, requests.ConnectionError):
        return "connection failed"
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return "invalid URL"
    return type(err).__name__


def _fetch(url: str, tmp: Path, *, size: int | None, timeout: float, desc: str, progress: bool) -> str | None:
    """Stream ``url`` into ``tmp``; returns why the attempt failed, or ``None``."""
    # identity encoding: Content-Length then counts the bytes we write, so truncation is detectable.
    # (connect, read) timeouts: the read timeout bounds every wait for data, so a stalled server fails.
    with requests.get(url, stream=True, timeout=(timeout, timeout), headers={"Accept-Encoding": "identity"}) as resp:
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        announced = resp.headers.get("Content-Length", "")
        expected = int(announced) if announced.isdigit() else None
        if expected is not None and size is not None and expected != size:
            return f"server announces {expected} bytes, expected {size}"
        received = 0
        with open(tmp, "wb") as f, tqdm(total=expected, unit="B", unit_scale=True, desc=desc, leave=False,
                                        disable=None if progress else True, file=sys.stderr) as bar:
            for chunk in resp.iter_content(chunk_size=CHUNK_SIZE):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        return f"truncated: got {received} of {expected} bytes"
    return None


def download_file(
    urls: str | Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
    desc: str | None = None,
    progress: bool = True,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``dest`` from the first URL that gives a complete file matching ``size``/``sha256``.

    An existing ``dest`` that matches is returned without any network access (one that does not is
    removed). ``check(tmp)`` may reject a download by raising ``HfSpamError`` (then the next URL is
    tried). Raises ``UnavailableError`` naming each URL and why it failed.
    """
    dest = Path(dest)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if dest.is_file() and check is None:
        if _mismatch(dest, sha256, size) is None:
            return dest
        dest.unlink()  # known bad: never leave it under the final name
    failures = []
    for url in urls:
        try:
            with atomic_path(dest) as tmp:
                problem = _fetch(url, tmp, size=size, timeout=timeout, desc=desc or dest.name, progress=progress)
                problem = problem or _mismatch(tmp, sha256, size)
                if problem is None and check is not None:
                    check(tmp)
                if problem is not None:
                    raise HfSpamError(problem)
            return dest
        except requests.RequestException as err:
            failures.append(f"{redact_url(url)} ({_network_reason(err, timeout)})")
        except HfSpamError as err:
            failures.append(f"{redact_url(url)} ({one_line(err).replace(str(tmp), dest.name)})")
        except OSError as err:
            failures.append(f"{redact_url(url)} (local file error: {err.strerror or type(err).__name__})")
    raise UnavailableError(f"could not download {dest.name} to {dest.parent}: {'; '.join(failures) or 'no URL given'}")


def extract_zip_member(zip_path: str | os.PathLike, member: str, dest: str | os.PathLike, *,
                       sha256: str | None = None) -> Path:
    """Extract the one entry whose base name is ``member`` from ``zip_path`` to ``dest``, atomically.

    Refuses absolute or ``..`` entry paths (zip-slip), missing or ambiguous members and a wrong sha256
    with an ``HfSpamError`` that names the archive.
    """
    zip_path = Path(zip_path)
    where = f"{zip_path}: bad archive:"
    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise HfSpamError(f"{zip_path}: not found; expected a zip archive holding {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise HfSpamError(f"{where} not a readable zip archive ({err}); expected one holding {member}") from None
    with zf:
        entries = [i for i in zf.infolist()
                   if not i.is_dir() and PurePosixPath(i.filename.replace("\\", "/")).name == member]
        for info in entries:
            name = info.filename.replace("\\", "/")
            if name.startswith("/") or name[1:2] == ":" or ".." in PurePosixPath(name).parts:
                raise HfSpamError(f"{where} refusing unsafe member path {info.filename!r} (absolute or '..'); "
                                  "expected a relative path")
        if not entries:
            found = ", ".join(repr(n) for n in zf.namelist()[:5]) or "nothing"
            raise HfSpamError(f"{where} no member named {member!r}; the archive holds {found}")
        if len(entries) > 1:
            names = ", ".join(repr(i.filename) for i in entries)
            raise HfSpamError(f"{where} {len(entries)} members named {member!r} ({names}); expected exactly one")
        try:
            with atomic_path(dest) as tmp:
                with open(tmp, "wb") as out, zf.open(entries[0]) as src:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
                if (problem := _mismatch(tmp, sha256, None)) is not None:
                    raise HfSpamError(f"{where} member {entries[0].filename!r} has {problem}")
        except (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError) as err:
            # bad CRC, truncated data, encryption, unsupported compression
            raise HfSpamError(f"{where} cannot extract {entries[0].filename!r} ({err})") from None
    return Path(dest)
