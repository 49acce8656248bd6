"""download_file and extract_zip_member against a real HTTP server on 127.0.0.1 and real zip files."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from hf_spam.download import download_file, extract_zip_member
from hf_spam.errors import HfSpamError, UnavailableError

GOOD = bytes(range(256)) * 300  # 76,800 bytes: several read chunks
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
WRONG = bytes(reversed(GOOD))  # same length, other content
TIMEOUT = 1.0  # client timeout for the stall cases
STALL = 5.0  # how long a stalled handler waits at most (cut short at teardown)


class _Server:
    """A ThreadingHTTPServer in a thread, recording every request path."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                route = self.path.split("?")[0].strip("/")
                try:
                    getattr(server, f"route_{route}", server.route_missing)(self)
                except OSError:
                    pass  # the client gave up (timeouts): nothing to do

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, route: str) -> str:
        return f"{self.base}/{route}"

    @staticmethod
    def _send(handler, body: bytes, status: int = 200, length: int | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)

    def route_good(self, h) -> None:
        self._send(h, GOOD)

    def route_wrong(self, h) -> None:
        self._send(h, WRONG)

    def route_truncated(self, h) -> None:
        # announces the full length, sends half, then the connection closes
        self._send(h, GOOD[: len(GOOD) // 2], length=len(GOOD))

    def route_missing(self, h) -> None:
        self._send(h, b"not found", status=404)

    def route_error(self, h) -> None:
        self._send(h, b"boom", status=500)

    def route_stall(self, h) -> None:
        # headers (and a first piece of the body), then silence
        h.send_response(200)
        h.send_header("Content-Length", str(len(GOOD)))
        h.end_headers()
        h.wfile.write(GOOD[:1000])
        h.wfile.flush()
        self.stop.wait(STALL)

    def route_stall_headers(self, h) -> None:
        # accepts the request and never answers
        self.stop.wait(STALL)


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.stop.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-listens-here"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_is_verified_and_atomic(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    out = download_file([server.url("good")], dest, sha256=GOOD_SHA, size=len(GOOD), progress=False)
    assert out == dest
    assert dest.read_bytes() == GOOD
    assert _leftovers(dest.parent) == ["file.bin"]  # no temp file left behind


def test_existing_verified_file_needs_no_request(server, tmp_path):
    dest = tmp_path / "file.bin"
    download_file([server.url("good")], dest, sha256=GOOD_SHA, progress=False)
    assert server.requests == ["/good"]
    download_file([server.url("good")], dest, sha256=GOOD_SHA, size=len(GOOD), progress=False)
    download_file(["http://127.0.0.1:9/unused"], dest, sha256=GOOD_SHA, progress=False)
    assert server.requests == ["/good"]


def test_existing_bad_file_is_replaced(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale partial content")
    download_file([server.url("good")], dest, sha256=GOOD_SHA, progress=False)
    assert server.requests == ["/good"]
    assert dest.read_bytes() == GOOD


@pytest.mark.parametrize(
    ("route", "kwargs", "reason"),
    [
        ("truncated", {}, "truncated"),
        ("wrong", {"sha256": GOOD_SHA}, "sha256"),
        ("good", {"size": len(GOOD) + 1}, f"expected {len(GOOD) + 1}"),
        ("missing", {}, "HTTP 404"),
        ("error", {}, "HTTP 500"),
        ("stall", {}, "stalled"),
        ("stall_headers", {}, "stalled"),
    ],
)
def test_each_failure_leaves_nothing(server, tmp_path, route, kwargs, reason):
    dest = tmp_path / "file.bin"
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        download_file([server.url(route)], dest, timeout=TIMEOUT, progress=False, **kwargs)
    assert time.monotonic() - start < TIMEOUT + 3  # a stall fails after about `timeout`
    msg = str(info.value)
    assert "file.bin" in msg and server.url(route) in msg and reason in msg, msg
    assert "\n" not in msg and info.value.__context__ is None and info.value.__cause__ is None
    assert _leftovers(tmp_path) == []


def test_connection_refused(tmp_path):
    url = _closed_port_url()
    with pytest.raises(UnavailableError, match="connection failed"):
        download_file([url], tmp_path / "f", timeout=TIMEOUT, progress=False)
    assert _leftovers(tmp_path) == []


def test_primary_fails_backup_succeeds(server, tmp_path):
    dest = tmp_path / "file.bin"
    urls = [server.url("missing"), server.url("truncated"), server.url("wrong"), server.url("good")]
    download_file(urls, dest, sha256=GOOD_SHA, timeout=TIMEOUT, progress=False)
    assert dest.read_bytes() == GOOD
    assert server.requests == ["/missing", "/truncated", "/wrong", "/good"]
    assert _leftovers(tmp_path) == ["file.bin"]


def test_all_fail_then_next_call_retries(server, tmp_path):
    dest = tmp_path / "file.bin"
    routes = ["missing", "error", "wrong", "truncated", "stall"]
    with pytest.raises(UnavailableError) as info:
        download_file([server.url(r) for r in routes], dest, sha256=GOOD_SHA, timeout=TIMEOUT, progress=False)
    msg = str(info.value)
    for r in routes:
        assert server.url(r) in msg
    assert not dest.exists() and _leftovers(tmp_path) == []
    download_file([server.url("good")], dest, sha256=GOOD_SHA, progress=False)
    assert dest.read_bytes() == GOOD


def test_error_message_hides_url_secrets(server, tmp_path):
    url = server.url("missing").replace("http://", "http://user:hunter2@") + "?token=s3cret"
    with pytest.raises(UnavailableError) as info:
        download_file([url], tmp_path / "f", progress=False)
    msg = str(info.value)
    assert "hunter2" not in msg and "s3cret" not in msg and "HTTP 404" in msg


# --- zip extraction -------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def test_extract_member_by_base_name(tmp_path):
    z = _zip(tmp_path / "a.zip", {"readme": b"r", "folder/data.txt": GOOD})
    out = extract_zip_member(z, "data.txt", tmp_path / "out" / "data.txt", sha256=GOOD_SHA)
    assert out.read_bytes() == GOOD
    assert _leftovers(tmp_path / "out") == ["data.txt"]


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "sub/../../evil", "C:/evil", "..\\evil"])
def test_unsafe_member_is_refused(tmp_path, name):
    z = _zip(tmp_path / "bad.zip", {"ok/evil": b"fine", name: b"owned"})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(HfSpamError, match="unsafe"):
        extract_zip_member(z, "evil", work / "evil")
    assert _leftovers(work) == [] and not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("not_zip", "not a readable zip"),
        ("no_member", "no member named"),
        ("two_members", "expected exactly one"),
        ("bad_sha", "sha256"),
        ("bad_crc", "cannot extract"),
        ("absent", "not found"),
    ],
)
def test_bad_archives(tmp_path, setup, reason):
    z = tmp_path / "a.zip"
    if setup == "not_zip":
        z.write_bytes(b"<html>a captive portal page</html>")
    elif setup == "no_member":
        _zip(z, {"other": b"x"})
    elif setup == "two_members":
        _zip(z, {"a/data.txt": b"1", "b/data.txt": b"2"})
    elif setup == "bad_sha":
        _zip(z, {"data.txt": WRONG})
    elif setup == "bad_crc":
        _zip(z, {"data.txt": GOOD}, zipfile.ZIP_STORED)
        raw = bytearray(z.read_bytes())
        raw[raw.index(GOOD[:64]) + 100] ^= 0xFF  # flip one stored data byte
        z.write_bytes(bytes(raw))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(HfSpamError, match=reason) as info:
        extract_zip_member(z, "data.txt", work / "data.txt", sha256=GOOD_SHA)
    assert str(z) in str(info.value) and "\n" not in str(info.value)
    assert _leftovers(work) == []
