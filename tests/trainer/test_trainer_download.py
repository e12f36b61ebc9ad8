"""Downloading the official files: a real HTTP server on 127.0.0.1 serves the real files.

The network is closed here, so the public mirrors are replaced by a local server through the same
``base_urls`` option users have; everything else (HTTP, caching, SHA-256 checks) is the real path.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR

from trainer.data.download import DownloadError, download_official, fetch_file
from trainer.data.idx import OFFICIAL_FILES, load_official


class _Server:
    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        _QuietHandler.requests.append(self.path)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    root = tmp_path / "mirror"
    root.mkdir()
    for name in OFFICIAL_FILES["test"]:
        shutil.copy(OFFICIAL_DIR / name, root / name)
    server = _Server(root)
    _QuietHandler.requests.clear()
    try:
        yield server, root
    finally:
        server.close()


def test_download_verifies_caches_and_matches_local_files(tmp_path: Path, mirror: tuple[_Server, Path]) -> None:
    server, _ = mirror
    cache = tmp_path / "cache"
    data = download_official("test", cache, [server.base])
    expected = load_official(OFFICIAL_DIR, "test")
    np.testing.assert_array_equal(data.images, expected.images)
    np.testing.assert_array_equal(data.labels, expected.labels)
    assert sorted(p.name for p in cache.iterdir()) == sorted(OFFICIAL_FILES["test"])  # no .part left over
    server.close()
    # Served from the verified cache now that the server is gone.
    again = download_official("test", cache, [server.base])
    np.testing.assert_array_equal(again.labels, expected.labels)


def test_bad_mirror_falls_back_to_the_next(tmp_path: Path, mirror: tuple[_Server, Path]) -> None:
    server, root = mirror
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    name = OFFICIAL_FILES["test"][1]
    labels = gzip.decompress((root / name).read_bytes())
    tampered = labels[:-1] + bytes([(labels[-1] + 1) % 10])  # one label changed: still a valid IDX file
    (bad_root / name).write_bytes(gzip.compress(tampered))
    bad = _Server(bad_root)
    try:
        path = fetch_file(name, tmp_path / "cache", [bad.base, server.base])
    finally:
        bad.close()
    assert gzip.decompress(path.read_bytes()) == labels


def test_tampered_or_missing_everywhere_is_a_clear_error(tmp_path: Path, mirror: tuple[_Server, Path]) -> None:
    server, root = mirror
    name = OFFICIAL_FILES["test"][0]
    (root / name).write_bytes((root / name).read_bytes()[:100_000])  # truncated download
    with pytest.raises(DownloadError, match="corrupt or truncated gzip"):
        fetch_file(name, tmp_path / "cache", [server.base])
    with pytest.raises(DownloadError, match="404"):
        fetch_file(name, tmp_path / "cache", [server.base + "nowhere/"])
    with pytest.raises(DownloadError, match="could not download"):
        fetch_file(name, tmp_path / "cache", ["http://127.0.0.1:9/"])  # nothing listens on port 9
    assert not list((tmp_path / "cache").glob("*"))  # nothing unverified was kept


def test_damaged_cache_entry_is_fetched_again(tmp_path: Path, mirror: tuple[_Server, Path]) -> None:
    server, _ = mirror
    name = OFFICIAL_FILES["test"][1]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).write_bytes(b"\x1f\x8bnot really gzip")
    path = fetch_file(name, cache, [server.base])
    assert path.read_bytes() == (OFFICIAL_DIR / name).read_bytes()
    assert any(r.endswith(name) for r in _QuietHandler.requests)
