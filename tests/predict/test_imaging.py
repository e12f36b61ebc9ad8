"""Bounded decoding and Fashion-MNIST-style preprocessing (common.imaging), on real images."""

from __future__ import annotations

import resource
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fm_synth import encode, load_idx, photo_of

from common.errors import InvalidImage, PayloadTooLarge
from common.imaging import decode_image, image_size, load_image_file, prepare_image

LIMITS = {"max_bytes": 4 * 1024 * 1024, "max_side": 4096}


@pytest.fixture(scope="module")
def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    return load_idx("t10k")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    """A valid gray PNG of side x side zeros: tiny on the wire, side**2 bytes once decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("ext,params", [(".png", []), (".jpg", []),
                                        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])])
def test_header_size_matches_the_decoded_image(ext: str, params: list[int]) -> None:
    img = np.random.default_rng(1).integers(0, 255, size=(123, 321, 3), dtype=np.uint8)
    data = cv2.imencode(ext, img, params)[1].tobytes()
    assert image_size(data) == (321, 123)
    assert decode_image(data, **LIMITS).shape == (123, 321)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(20_000)  # 400 MB of pixels
    assert len(bomb) < LIMITS["max_bytes"], "the byte limit alone must not be what stops it"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(bomb, **LIMITS)
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB
    assert info.value.code == "image_too_large"
    assert "20000x20000" in info.value.message


def test_png_at_the_side_limit_still_decodes() -> None:
    data = png_bomb(300)
    assert decode_image(data, max_bytes=10**6, max_side=300).shape == (300, 300)
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_bytes=10**6, max_side=299)


def test_jpeg_declaring_huge_dimensions_is_refused() -> None:
    data = bytearray(encode(np.zeros((16, 16), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 50_000)  # height, width
    with pytest.raises(PayloadTooLarge, match="50000x60000"):
        decode_image(bytes(data), **LIMITS)


def test_too_many_bytes_is_refused() -> None:
    data = encode(np.zeros((64, 64), np.uint8), ".png")
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(data, max_bytes=len(data) - 1, max_side=4096)
    assert info.value.code == "payload_too_large"


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_files_are_invalid(ext: str, keep: float, fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    img = cv2.resize(fashion_test[0][0], (280, 280))
    data = encode(img, ext)
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: int(len(data) * keep)], **LIMITS)
    assert info.value.code == "invalid_image"


@pytest.mark.parametrize("data", [b"", b"hello world", b"GIF89a" + b"\x00" * 40, b"\x89PNG\r\n\x1a\n",
                                  b"\xff\xd8\xff\xe0\x00\x10JFIF", b"BM" + b"\x00" * 60])
def test_non_images_and_other_formats_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, **LIMITS)


def test_zero_dimension_header_is_invalid() -> None:
    data = bytearray(encode(np.zeros((8, 8), np.uint8), ".png"))
    data[16:20] = b"\x00\x00\x00\x00"
    with pytest.raises(InvalidImage, match="zero dimension"):
        decode_image(bytes(data), **LIMITS)


def test_large_jpeg_is_decoded_at_reduced_scale_when_allowed() -> None:
    img = np.full((2000, 1600), 255, np.uint8)
    img[500:1500, 400:1200] = 0
    data = encode(img)
    assert decode_image(data, **LIMITS).shape == (2000, 1600)
    assert decode_image(data, **LIMITS, min_side=224).shape == (500, 400)  # 1/4: 1/8 would go under 224
    assert decode_image(data, **LIMITS, min_side=200).shape == (250, 200)


def test_fashion_mnist_images_pass_through_unchanged(fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    images = fashion_test[0][:2000]
    for img in images:
        assert np.array_equal(prepare_image(img), img)
    # The same images with their colours swapped (dark garment on white) are put back.
    for img in images[:200]:
        assert np.array_equal(prepare_image(255 - img), img)


def test_photo_is_inverted_cropped_and_framed() -> None:
    # A dark 300 x 100 "trouser" far off-centre on a white 1000 x 800 page.
    page = np.full((1000, 800), 245, np.uint8)
    page[600:900, 50:150] = 30
    out = prepare_image(page)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows = np.nonzero(out.max(axis=1) > 128)[0]
    cols = np.nonzero(out.max(axis=0) > 128)[0]
    assert rows.min() == 0 and rows.max() == 27, "the long side fills the frame"
    assert 8 <= cols.size <= 11, "aspect ratio kept (100/300 of 28 is 9.3 px)"
    assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 1, "centred"
    assert out[:, :5].max() == 0 and out[:, -5:].max() == 0, "background is black as in Fashion-MNIST"
    assert out[1:27, cols.min() + 1 : cols.max()].min() >= 250, "garment is bright (edges are area-averaged)"


def test_colour_photo_on_white_looks_like_its_source(fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    rng = np.random.default_rng(7)
    images = fashion_test[0][:50]
    diffs = []
    for img in images:
        gray = decode_image(encode(photo_of(img, rng)), **LIMITS)
        out = prepare_image(gray)
        diffs.append(np.abs(out.astype(int) - img.astype(int)).mean())
    # A perfect pipeline gives 0; a wrong polarity gives about 150, a missed crop about 60.
    assert np.median(diffs) < 25


def test_transparent_png_keeps_light_and_dark_garments_visible() -> None:
    for garment in (255, 0):
        bgra = np.zeros((200, 200, 4), np.uint8)
        bgra[..., :3] = 0 if garment else 255  # what hides under transparency varies by editor
        bgra[50:150, 80:120, :3] = garment
        bgra[50:150, 80:120, 3] = 255
        out = prepare_image(decode_image(encode(bgra, ".png"), **LIMITS))
        assert out[1:27, 13:15].min() >= 250 and out[:, :4].max() == 0, f"garment {garment} lost"


def test_sixteen_bit_png_decodes_to_eight_bits() -> None:
    img = np.full((40, 40), 65535, np.uint16)
    img[10:30, 10:30] = 0
    gray = decode_image(encode(img, ".png"), **LIMITS)
    assert gray.dtype == np.uint8 and gray[0, 0] == 255 and gray[20, 20] == 0


def test_load_image_file_reads_a_photo(tmp_path: Path, fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    path = tmp_path / "boot.jpg"
    path.write_bytes(encode(photo_of(fashion_test[0][0], np.random.default_rng(3))))
    out = load_image_file(path)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - fashion_test[0][0].astype(int)).mean() < 30


def test_load_image_file_errors_are_invalid_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="cannot read"):
        load_image_file(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InvalidImage, match="not a PNG or JPEG"):
        load_image_file(tmp_path / "notes.txt")
