"""Fetch the official Fashion-MNIST files from their public home into a local cache, verified.

The files are checked by the SHA-256 of their *decompressed* IDX content rather than of the ``.gz``
bytes: mirrors (Debian's package among them) recompress the files, which changes the gzip bytes but
never the data. A download is written to a temporary file, verified, then moved into the cache, so
the cache never holds a partial or wrong file; a cached file is verified again before use.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

from trainer.data.dataset import DataError, Dataset
from trainer.data.idx import OFFICIAL_FILES, load_idx_pair

# Public homes of the dataset, tried in order (each is a URL prefix the file names are appended to).
DEFAULT_BASE_URLS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

# SHA-256 of each file's decompressed content (the IDX bytes).
CONTENT_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the largest official file is 26 MB


class DownloadError(DataError):
    """No mirror delivered a file whose content matches the expected SHA-256."""

    code = "dataset_download_failed"


def default_cache_dir() -> Path:
    """``~/.cache/fashion-pipeline/datasets/fashion-mnist``."""
    return Path.home() / ".cache" / "fashion-pipeline" / "datasets" / "fashion-mnist"


def content_sha256(path: Path) -> str:
    """SHA-256 of the decompressed content of a ``.gz`` file (of the raw bytes if not gzipped)."""
    h = hashlib.sha256()
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return h.hexdigest()


def _fetch(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as resp, dest.open("wb") as out:
        copied = 0
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            copied += len(chunk)
            if copied > MAX_DOWNLOAD_BYTES:
                raise DownloadError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes, refusing")
            out.write(chunk)


def fetch_file(name: str, cache_dir: Path, base_urls: Sequence[str], timeout: float = 60.0) -> Path:
    """Return the cached, verified file ``name``, downloading it from the first mirror that works."""
    if name not in CONTENT_SHA256:
        raise ValueError(f"unknown Fashion-MNIST file {name!r}")
    expected = CONTENT_SHA256[name]
    target = cache_dir / name
    if target.exists():
        try:
            if content_sha256(target) == expected:
                return target
        except DataError:
            pass
        target.unlink()  # a stale or damaged cache entry: fetch again
    cache_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name
        fd, tmp_name = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=cache_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, timeout)
            got = content_sha256(tmp)
            if got != expected:
                failures.append(f"{url}: content SHA-256 {got[:12]}... does not match {expected[:12]}...")
                continue
            shutil.move(tmp, target)
            return target
        except (urllib.error.URLError, OSError, DataError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {name}: " + "; ".join(failures))


def download_official(split: str = "train", cache_dir: str | os.PathLike[str] | None = None,
                      base_urls: Sequence[str] = DEFAULT_BASE_URLS, timeout: float = 60.0) -> Dataset:
    """The official ``train`` or ``test`` split, fetched into (or read from) the cache."""
    if split not in OFFICIAL_FILES:
        raise ValueError(f"split must be one of {sorted(OFFICIAL_FILES)}, got {split!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    images, labels = (fetch_file(n, cache, base_urls, timeout) for n in OFFICIAL_FILES[split])
    return load_idx_pair(images, labels)
