"""The demo download (curation.flagging.demo) against a real local HTTP server."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from curation.flagging import demo


@pytest.fixture
def served(tmp_path):
    """A small lfw-like tarball served over HTTP on localhost; yields (base url, sha256, server folder)."""
    root = tmp_path / "www"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for person in ("Ann_A", "Bob_B"):
            for i in range(2):
                data = f"{person}{i}".encode()
                info = tarfile.TarInfo(f"lfw/{person}/{person}_000{i}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / "lfw.tgz").write_bytes(buf.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(buf.getvalue()).hexdigest(), root
    server.shutdown()
    server.server_close()


def test_download_verifies_extracts_and_caches(served, tmp_path):
    base, sha, www = served
    cache = tmp_path / "cache"
    root = demo.fetch_lfw(cache, url=f"{base}/lfw.tgz", sha256=sha, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["Ann_A", "Bob_B"]
    assert (root / "Ann_A" / "Ann_A_0001.jpg").read_bytes() == b"Ann_A1"
    (www / "lfw.tgz").unlink()  # second run: served from the cache, nothing fetched
    assert demo.fetch_lfw(cache, url=f"{base}/lfw.tgz", sha256=sha, progress=False) == root


def test_checksum_mismatch_is_refused_and_nothing_is_kept(served, tmp_path):
    base, sha, _ = served
    dest = tmp_path / "cache" / "lfw.tgz"
    with pytest.raises(demo.DownloadError, match="checksum mismatch"):
        demo.download(f"{base}/lfw.tgz", dest, "0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("lfw.tgz.part").exists()


def test_unreachable_server_is_a_download_error(tmp_path):
    with pytest.raises(demo.DownloadError, match="could not download"):
        demo.download("http://127.0.0.1:9/lfw.tgz", tmp_path / "x.tgz", "0" * 64, timeout=5, progress=False)


def test_lfw_constants_look_like_the_published_ones():
    assert demo.LFW_URL.startswith("https://") and len(demo.LFW_SHA256) == 64
    int(demo.LFW_SHA256, 16)
