"""Bounded image decoding and the preprocessing shared by the predictor and the trainer.

Two jobs, kept apart so each can be tested alone:

* :func:`decode_image` turns untrusted PNG/JPEG bytes into a gray ``uint8`` array. It reads the
  image's width and height from the file header *before* decoding, because a 0.9 MB PNG can
  decode to 900 MB and OpenCV would happily allocate it. Only PNG and JPEG are accepted (by their
  magic bytes), so the rest of OpenCV's decoders are never reached by a message.
* :func:`prepare_image` turns any gray image (a phone photo, a product shot on white, a
  Fashion-MNIST sample) into what the model was trained on: a light garment on a black background,
  cropped to the garment and scaled so that its longer side fills the frame, like the official
  Fashion-MNIST conversion (trim, resize the longest edge to 28, centre, negate).

Error codes (stable, they reach the errors topic):

* ``payload_too_large`` (:class:`~common.errors.PayloadTooLarge`): more bytes than ``max_bytes``.
* ``image_too_large`` (:class:`~common.errors.PayloadTooLarge` with that code): the header declares
  a side longer than ``max_side``. The image is refused before any pixel is decoded.
* ``invalid_image`` (:class:`~common.errors.InvalidImage`): not PNG or JPEG, a header that cannot be
  read, a zero dimension, or a body that does not decode (truncated or corrupt files).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from common.errors import InvalidImage, PayloadTooLarge

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"

# Local files (command line, trainer folders) are trusted more than messages but still bounded:
# a 48-megapixel phone photo is 8064 px on its long side.
FILE_MAX_BYTES = 64 * 1024 * 1024
FILE_MAX_SIDE = 12_000

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); each carries the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}

# A 28x28 input counts as already prepared (dark background) unless more of its border is light
# than dark; see _has_light_background.
_LIGHT = 160
_DARK = 96


def image_format(data: bytes) -> str:
    """Name the container (``"png"`` or ``"jpeg"``) from the magic bytes, or raise InvalidImage."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    raise InvalidImage("not a PNG or JPEG image")


def image_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` read from the PNG or JPEG header, without decoding any pixels."""
    fmt = image_format(data)
    if fmt == "png":
        return _png_size(data)
    return _jpeg_size(data)


def _png_size(data: bytes) -> tuple[int, int]:
    # The first chunk must be IHDR: length (4) + type (4) + width (4) + height (4).
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InvalidImage("truncated or malformed PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # Walk the marker segments from SOI until a start-of-frame segment, which holds the size.
    pos = 2
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            raise InvalidImage("malformed JPEG header")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        if pos + 2 > n:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise InvalidImage("malformed JPEG header")
        if marker in _JPEG_SOF:
            if pos + 7 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        pos += length
    raise InvalidImage("truncated JPEG: no frame header")


def decode_image(data: bytes, *, max_bytes: int, max_side: int, min_side: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG ``data`` to a gray ``uint8`` HxW array, refusing oversized images first.

    ``min_side``: when given, a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg does
    this inside the DCT, so it is faster and smaller) as long as its shorter side stays at least
    ``min_side`` pixels. The predictor passes a few times the model's input size; the default
    decodes at full size.

    Transparent PNGs are composited onto a background that contrasts with their opaque pixels, so
    that a white shirt on transparency and a black boot on transparency both stay visible.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes, the limit is {max_bytes}")
    fmt = image_format(data)
    width, height = image_size(data)
    if width == 0 or height == 0:
        raise InvalidImage(f"image header declares a zero dimension ({width}x{height})")
    if width > max_side or height > max_side:
        raise PayloadTooLarge(f"image is {width}x{height} pixels, the limit is {max_side} per side",
                              code="image_too_large")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        if fmt == "jpeg":
            img = cv2.imdecode(buf, _jpeg_flag(width, height, min_side))
        else:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InvalidImage(f"{fmt} image does not decode: {exc}") from exc
    if img is None:
        raise InvalidImage(f"{fmt} image does not decode (truncated or corrupt)")
    return _to_gray_uint8(img)


def _jpeg_flag(width: int, height: int, min_side: int | None) -> int:
    if min_side is None:
        return cv2.IMREAD_GRAYSCALE
    for factor, flag in ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                         (2, cv2.IMREAD_REDUCED_GRAYSCALE_2)):
        if min(width, height) // factor >= min_side:
            return int(flag)
    return cv2.IMREAD_GRAYSCALE


def _to_gray_uint8(img: np.ndarray) -> np.ndarray:
    """Reduce whatever imdecode returned (8/16 bit, 1/3/4 channels) to gray uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InvalidImage(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return img
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(img[:, :, 0])
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        gray = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY).astype(np.float32)
        alpha = img[:, :, 3].astype(np.float32) / 255.0
        opaque = alpha > 0.5
        if opaque.all():
            return gray.astype(np.uint8)
        # Background opposite to the subject's mean brightness, so prepare_image can find it.
        subject_mean = float(gray[opaque].mean()) if opaque.any() else 0.0
        background = 0.0 if subject_mean >= 128 else 255.0
        out = gray * alpha + background * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    raise InvalidImage(f"unsupported channel count {channels}")


def _to_gray(img: np.ndarray) -> np.ndarray:
    """Accept HxW, HxWx1, HxWx3 (BGR) or HxWx4; return HxW uint8."""
    if img.ndim not in (2, 3) or img.size == 0:
        raise InvalidImage(f"expected a non-empty 2-D image, got shape {img.shape}")
    if img.dtype != np.uint8:
        if not np.isfinite(img).all() or img.min() < 0 or img.max() > 255:
            raise InvalidImage("pixel values must be finite and within 0-255")
        return _to_gray_uint8(np.rint(img).astype(np.uint8))
    return _to_gray_uint8(img)


def _border(img: np.ndarray) -> np.ndarray:
    """Pixels of the outer ring (about 4% of each side, at least one pixel)."""
    h, w = img.shape
    t = max(1, round(min(h, w) * 0.04))
    return np.concatenate([img[:t].ravel(), img[-t:].ravel(), img[:, :t].ravel(), img[:, -t:].ravel()])


def _has_light_background(img: np.ndarray) -> bool:
    """True when more of the border is light than dark: the garment is dark on a light ground.

    Counting light against dark border pixels, rather than taking a mean, keeps Fashion-MNIST
    samples whose garment touches the frame (a wide pullover) on the dark side.
    """
    ring = _border(img)
    light = int(np.count_nonzero(ring >= _LIGHT))
    dark = int(np.count_nonzero(ring <= _DARK))
    return light > dark


def _flatten_background(img: np.ndarray) -> np.ndarray:
    """Subtract a plane fitted to the background pixels of the border (uneven lighting).

    Border pixels far from the border's median (a garment touching the frame) are left out of
    the fit. The result keeps the border's median level, so only the slope is removed.
    """
    h, w = img.shape
    t = max(1, round(min(h, w) * 0.04))
    mask = np.zeros((h, w), dtype=bool)
    mask[:t] = mask[-t:] = True
    mask[:, :t] = mask[:, -t:] = True
    ys, xs = np.nonzero(mask)
    values = img[ys, xs].astype(np.float64)
    median = float(np.median(values))
    spread = max(8.0, 3.0 * float(np.median(np.abs(values - median))))
    keep = np.abs(values - median) <= spread
    if keep.sum() < 16:
        return img
    design = np.column_stack([xs[keep] / w, ys[keep] / h, np.ones(int(keep.sum()))])
    (a, b, c), *_ = np.linalg.lstsq(design, values[keep], rcond=None)
    if abs(a) < 4 and abs(b) < 4:  # flat already: leave the pixels untouched
        return img
    yy, xx = np.mgrid[0:h, 0:w]
    plane = a * (xx / w) + b * (yy / h) + c
    return np.clip(img.astype(np.float64) - plane + median + 0.5, 0, 255).astype(np.uint8)


def _garment_is_darker(img: np.ndarray) -> bool:
    """True when what stands out from the border's level is mostly darker than it.

    Measured as mass (how far, how many pixels) beyond a noise band around the background, so a
    dark shoe on a mid-grey floor is inverted and a white shirt on black cloth is not.
    """
    ring = _border(img)
    background = float(np.median(ring))
    noise = max(8.0, 3.0 * float(np.median(np.abs(ring.astype(np.float64) - background))))
    diff = img.astype(np.float64) - background
    darker = float(np.clip(-diff - noise, 0, None).sum())
    lighter = float(np.clip(diff - noise, 0, None).sum())
    return darker > lighter


def prepare_image(gray: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Make model input from any gray image: light garment on black, cropped, framed, resized.

    ``size`` is ``(height, width)``. An image that already has that size is taken as already
    framed: it is only inverted when its background is light, so a Fashion-MNIST sample passes
    through unchanged. Any other image is

    1. evened out: a plane fitted to the border is subtracted, so light falling off across a
       photo does not read as garment,
    2. inverted when the garment is darker than its background (photographed on white or grey),
    3. shifted so its background level is 0 and stretched so the garment's brightest part is 255,
    4. cropped to the garment (Otsu threshold on a blurred copy, specks removed),
    5. padded with black to the target aspect ratio, centred, and resized with area averaging,
       so that the garment's longer side fills the frame as in Fashion-MNIST.
    """
    img = _to_gray(np.asarray(gray))
    out_h, out_w = size
    if img.shape == (out_h, out_w):
        return (255 - img) if _has_light_background(img) else img.copy()
    img = _flatten_background(img)
    if _garment_is_darker(img):
        img = 255 - img
    img = _stretch(img)
    y0, y1, x0, x1 = _garment_box(img)
    crop = img[y0:y1, x0:x1]
    return _fit(crop, out_h, out_w)


def _stretch(img: np.ndarray) -> np.ndarray:
    """Move the background to 0 and the garment's bright end to 255, as Fashion-MNIST samples are.

    The bright end is the 99.99th percentile, so a few hot pixels of a large photo cannot set it.
    """
    bg = float(np.median(_border(img)))
    hi = float(np.percentile(img, 99.99))
    if hi - bg < 8:  # a blank or nearly uniform image: nothing to stretch
        return np.clip(img.astype(np.float32) - bg, 0, 255).astype(np.uint8)
    scaled = (img.astype(np.float32) - bg) * (255.0 / (hi - bg))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _garment_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the garment; the whole image when none is found."""
    h, w = img.shape
    k = max(3, (min(h, w) // 100) | 1)  # odd kernel that grows with the image
    blurred = cv2.GaussianBlur(img, (k, k), 0)
    thr, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Faint textures inside a garment still count, but not sensor noise or JPEG ringing.
    mask = (blurred > max(thr * 0.5, 12)).astype(np.uint8)
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    ys, xs = np.nonzero(opened)
    if ys.size == 0:
        return 0, h, 0, w
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _fit(crop: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Pad ``crop`` with black to the output aspect ratio (centred), then resize to the output."""
    h, w = crop.shape
    canvas_h = max(h, int(np.ceil(w * out_h / out_w)))
    canvas_w = max(w, int(np.ceil(h * out_w / out_h)))
    canvas = np.zeros((canvas_h, canvas_w), dtype=np.uint8)
    y = (canvas_h - h) // 2
    x = (canvas_w - w) // 2
    canvas[y : y + h, x : x + w] = crop
    interp = cv2.INTER_AREA if canvas_h >= out_h else cv2.INTER_LINEAR
    return cv2.resize(canvas, (out_w, out_h), interpolation=interp)


def load_image_file(
    path: str | Path,
    size: tuple[int, int] = (28, 28),
    *,
    max_bytes: int = FILE_MAX_BYTES,
    max_side: int = FILE_MAX_SIDE,
) -> np.ndarray:
    """Read a local PNG/JPEG and return model-ready ``uint8`` pixels of ``size`` (command line, trainer).

    Local files only: the message path never calls this. Decoding is bounded all the same.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidImage(f"cannot read image file {p}: {exc.strerror or exc}") from exc
    gray = decode_image(data, max_bytes=max_bytes, max_side=max_side, min_side=8 * max(size))
    return prepare_image(gray, size=size)
