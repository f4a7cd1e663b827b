"""Downloads against a loopback HTTP server: full download, resume with Range after a dropped
connection, a server that ignores Range, checksum mismatch, HTTP errors, fetch_dataset."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from occsynth.sources import fetch as fetch_mod
from occsynth.sources.fetch import KNOWN_DATASETS, FetchError, RemoteFile, fetch, fetch_dataset

PAYLOAD = bytes(range(256)) * 2000 + b"tail"  # 512,004 bytes: several chunks


class Handler(BaseHTTPRequestHandler):
    """Serves server.files; server.mode: "range" (honours Range), "norange" (ignores it);
    server.drops: how many more responses to cut after half their body."""

    def do_GET(self):  # noqa: N802
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and server.mode == "range":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.drops > 0:
            server.drops -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files = {"data.bin": PAYLOAD}
    srv.mode, srv.drops, srv.log = "range", 0, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_full_download_is_verified_and_atomic(server, tmp_path):
    path = fetch(f"{server.url}/data.bin", tmp_path, sha256=SHA, progress=False)
    assert path == tmp_path / "data.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()
    # present with the right digest: not downloaded again
    fetch(f"{server.url}/data.bin", tmp_path, sha256=SHA, progress=False)
    assert len(server.log) == 1


def test_dropped_connection_keeps_part_and_next_call_resumes(server, tmp_path):
    server.drops = 1
    with pytest.raises(FetchError, match=r"interrupted \(connection closed after 256,002 of 512,004 bytes\)"):
        fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=SHA, progress=False, retries=0)
    part = tmp_path / "d.bin.part"
    assert part.read_bytes() == PAYLOAD[:256002] and not (tmp_path / "d.bin").exists()
    fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=SHA, progress=False, retries=0)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD and not part.exists()
    assert server.log[-1] == ("/data.bin", "bytes=256002-")


def test_retries_resume_within_one_call(server, tmp_path):
    server.drops = 2  # cut the first response and the first resume
    fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=SHA, progress=False, retries=2)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD
    assert [r for _, r in server.log] == [None, "bytes=256002-", f"bytes={256002 + (512004 - 256002) // 2}-"]


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    (tmp_path / "d.bin.part").write_bytes(b"stale bytes from another file")
    server.mode = "norange"
    fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=SHA, progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD
    assert server.log[0][1] == "bytes=29-"  # it was asked to resume, sent everything: not appended


def test_complete_part_answered_416_is_finished(server, tmp_path):
    (tmp_path / "d.bin.part").write_bytes(PAYLOAD)
    fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=SHA, progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_and_explains(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(FetchError, match=f"sha256 of the download is {SHA}, expected {wrong}; the file was deleted"):
        fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=wrong, progress=False)
    assert list(tmp_path.iterdir()) == []
    # an existing file with another digest is never overwritten
    (tmp_path / "d.bin").write_bytes(b"mine")
    with pytest.raises(FetchError, match="exists with sha256 .* delete it to download again"):
        fetch(f"{server.url}/data.bin", tmp_path / "d.bin", sha256=SHA, progress=False)
    assert (tmp_path / "d.bin").read_bytes() == b"mine"


def test_http_error_is_clear_and_not_retried(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{server.url}/nope.bin", tmp_path / "n.bin", progress=False, retries=3)
    assert len(server.log) == 1 and list(tmp_path.iterdir()) == []


def test_fetch_dataset_from_a_base_url(server, tmp_path, monkeypatch):
    other = b"second file\n"
    server.files["b.txt"] = other
    monkeypatch.setitem(
        KNOWN_DATASETS,
        "tiny",
        [
            RemoteFile("data.bin", ("http://unused.invalid/data.bin",), SHA),
            RemoteFile("b.txt", ("http://unused.invalid/b.txt",), hashlib.sha256(other).hexdigest()),
        ],
    )
    got = fetch_dataset("tiny", tmp_path / "tiny", base_url=server.url + "/", progress=False)
    assert got == {"data.bin": tmp_path / "tiny" / "data.bin", "b.txt": tmp_path / "tiny" / "b.txt"}
    assert got["b.txt"].read_bytes() == other
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        fetch_dataset("nope", tmp_path)


def test_fetch_dataset_tries_mirrors_in_order(server, tmp_path, monkeypatch):
    server.files["bad.bin"] = b"a different file"
    monkeypatch.setitem(
        KNOWN_DATASETS,
        "tiny",
        [RemoteFile("data.bin", (f"{server.url}/missing.bin", f"{server.url}/bad.bin", f"{server.url}/data.bin"), SHA)],
    )
    fetch_dataset("tiny", tmp_path, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    monkeypatch.setitem(KNOWN_DATASETS, "tiny", [RemoteFile("x.bin", (f"{server.url}/missing.bin",), SHA)])
    with pytest.raises(FetchError, match=r"could not fetch x.bin of tiny:\n  .*HTTP 404"):
        fetch_dataset("tiny", tmp_path, progress=False)


@pytest.mark.lfw
def test_known_lfw_checksums_match_the_real_files(lfw_tgz):
    for remote in KNOWN_DATASETS["lfw"]:
        path = lfw_tgz.parent / remote.name
        assert fetch_mod.sha256_file(path) == remote.sha256, remote.name
        assert all(url.endswith(remote.name) or "figshare" in url for url in remote.urls)
