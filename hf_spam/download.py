"""Safe downloads: primary → backup URLs, timeouts, size/sha256 checks, atomic writes.

Nothing is ever left under the final name unless it was verified: bytes go to a temp file in the
destination folder and only a complete, checked file is ``os.replace``-d into place. A failed
attempt removes its temp file, so the next call simply retries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import requests
from tqdm.auto import tqdm

CHUNK_SIZE = 1 << 16


class DownloadError(RuntimeError):
    """No URL gave a verified file; the one-line message names the file and each URL's failure.

    ``failures`` holds one ``"URL (reason)"`` string per URL tried.
    """

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


class ArchiveError(ValueError):
    """A zip archive is unreadable, lacks the wanted member, holds an unsafe path or fails its checksum."""


class _AttemptFailed(Exception):
    """One URL's failure, with a short reason for the final message."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def redact_url(url: str) -> str:
    """The URL without user:password and query/fragment, which may carry secrets (signed URLs, tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
    """``None`` when ``path`` matches the expected size and sha256, else the reason it does not."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            return f"sha256 {actual}, expected {sha256.lower()}"
    return None


def _describe(err: BaseException, timeout: float) -> str:
    """A short, secret-free reason for a requests/urllib3 failure (their own messages are long and nested)."""
    import urllib3.exceptions as u3

    # requests wraps a read timeout inside iter_content as ConnectionError(ReadTimeoutError).
    inner = err.args[0] if err.args else None
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return f"connection timed out after {timeout:g}s"
    if isinstance(err, requests.exceptions.ReadTimeout) or isinstance(inner, u3.ReadTimeoutError):
        return f"stalled: no data for {timeout:g}s"
    if isinstance(err, requests.exceptions.ChunkedEncodingError) or isinstance(inner, u3.ProtocolError):
        return "truncated: connection closed before the end of the file"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS/SSL error"
    if isinstance(err, requests.exceptions.ConnectionError):
        return "connection failed"
    if isinstance(err, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return "invalid URL"
    return type(err).__name__


def _fetch(url: str, tmp: Path, *, size: int | None, timeout: float, desc: str, progress: bool) -> None:
    """Stream ``url`` into ``tmp``; raise ``_AttemptFailed`` on any network or length problem."""
    # identity encoding: Content-Length then counts the bytes we write, so truncation is detectable.
    headers = {"Accept-Encoding": "identity"}
    # (connect, read): the read timeout bounds every wait for data, so a stalled server fails.
    with requests.get(url, stream=True, timeout=(timeout, timeout), headers=headers) as resp:
        if resp.status_code != 200:
            raise _AttemptFailed(f"HTTP {resp.status_code}")
        announced = resp.headers.get("Content-Length")
        expected = int(announced) if announced and announced.isdigit() else None
        if resp.headers.get("Content-Encoding", "identity") not in ("identity", ""):
            expected = None  # the header then counts encoded bytes
        if expected is not None and size is not None and expected != size:
            raise _AttemptFailed(f"server announces {expected} bytes, expected {size}")
        received = 0
        with (
            open(tmp, "wb") as f,
            tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=True if not progress else None, leave=False, file=sys.stderr,
            ) as bar,
        ):
            for chunk in resp.iter_content(chunk_size=CHUNK_SIZE):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise _AttemptFailed(f"truncated: got {received} of {expected} bytes")


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
    desc: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``dest`` from the first URL that gives a complete file matching ``size``/``sha256``.

    An existing ``dest`` that matches is returned without any network access (one that does not
    match is removed). ``timeout`` bounds the connection and every wait for data. Raises
    ``DownloadError`` naming each URL and why it failed.
    """
    dest = Path(dest)
    if isinstance(urls, str):
        urls = [urls]
    if dest.is_file():
        if _verify(dest, sha256, size) is None:
            return dest
        dest.unlink()  # known bad: never leave it under the final name
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, size=size, timeout=timeout, desc=desc or dest.name, progress=progress)
            problem = _verify(tmp, sha256, size)
            if problem is not None:
                raise _AttemptFailed(problem)
            os.replace(tmp, dest)
            return dest
        except _AttemptFailed as err:
            failures.append(f"{redact_url(url)} ({err})")
        except requests.exceptions.RequestException as err:
            failures.append(f"{redact_url(url)} ({_describe(err, timeout)})")
        except OSError as err:
            failures.append(f"{redact_url(url)} (local file error: {err.strerror or type(err).__name__})")
        finally:
            tmp.unlink(missing_ok=True)
    tried = "; ".join(failures) if failures else "no URL given"
    raise DownloadError(f"could not download {dest.name} to {dest.parent}: {tried}", failures)


def _is_unsafe(name: str) -> bool:
    """True for absolute paths, drive letters and ``..`` components (zip-slip)."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return True
    return ".." in PurePosixPath(norm).parts


def extract_zip_member(zip_path: str | os.PathLike, member: str, dest: str | os.PathLike, *,
                       sha256: str | None = None) -> Path:
    """Extract the one member whose base name is ``member`` from ``zip_path`` to ``dest``.

    Refuses an archive whose matching entries have absolute or ``..`` paths, and ambiguous or
    missing members; checks ``sha256`` before the atomic ``os.replace``. Raises ``ArchiveError``.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ArchiveError(f"{zip_path}: not found; expected a zip archive holding {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ArchiveError(f"{zip_path}: not a readable zip archive ({err}); expected one holding {member}") from None
    with zf:
        infos = [
            i for i in zf.infolist()
            if not i.is_dir() and PurePosixPath(i.filename.replace("\\", "/")).name == member
        ]
        unsafe = [i.filename for i in infos if _is_unsafe(i.filename)]
        if unsafe:
            raise ArchiveError(
                f"{zip_path}: refusing unsafe member path {unsafe[0]!r} (absolute or '..'); expected a relative path"
            )
        if not infos:
            names = ", ".join(repr(n) for n in zf.namelist()[:5]) or "nothing"
            raise ArchiveError(f"{zip_path}: no member named {member!r}; the archive holds {names}")
        if len(infos) > 1:
            names = ", ".join(repr(i.filename) for i in infos)
            raise ArchiveError(f"{zip_path}: {len(infos)} members named {member!r} ({names}); expected exactly one")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(infos[0]) as src:
                shutil.copyfileobj(src, out, CHUNK_SIZE)
            problem = _verify(tmp, sha256, None)
            if problem is not None:
                raise ArchiveError(f"{zip_path}: member {infos[0].filename!r} has {problem}")
            os.replace(tmp, dest)
        except (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError) as err:
            # bad CRC, truncated data, encryption, unsupported compression
            raise ArchiveError(f"{zip_path}: cannot extract {infos[0].filename!r} ({err})") from None
        finally:
            tmp.unlink(missing_ok=True)
    return dest
