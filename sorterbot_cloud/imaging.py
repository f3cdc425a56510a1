"""Decode and validate encoded frame bytes (JPEG or PNG) with OpenCV.

The wire protocol (docs/design.rst) carries frames as raw encoded bytes. This module is the
one place that turns those bytes into an RGB image and decides whether they are a
complete, decodable JPEG or PNG; every rejection raises
:class:`~sorterbot_cloud.errors.InvalidImage` saying what was wrong. It also holds the
one check of a decoded image array (:func:`check_image`) and the one reader of image
files on disk (:func:`read_image_file`: training, evaluation and benchmark data).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from sorterbot_cloud.errors import InvalidImage

#: JPEG files start with SOI ``FF D8`` followed by a marker ``FF xx`` (ITU-T T.81, B.1.1.2).
JPEG_MAGIC = b"\xff\xd8\xff"
#: JPEG files end with EOI ``FF D9`` (ITU-T T.81, B.2.1).
JPEG_EOI = b"\xff\xd9"
#: PNG signature (PNG specification, 3rd edition, section 5.2).
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The last chunk of every PNG: length 0, type IEND, CRC ``AE 42 60 82`` (section 11.2.5).
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Largest frame accepted, in pixels (a decompression-bomb guard; the reference frame
#: is 1640 x 1232 = 2.0 Mpx).
MAX_PIXELS = 50_000_000
#: Largest ratio of a frame's longer side to its shorter side accepted at ingest (the
#: reference frame is 1640 x 1232, ratio 1.33; a 40 x 40960 strip, ratio 1024, is no
#: camera frame and would make the session overview thousands of thumbnails tall).
MAX_ASPECT_RATIO = 8.0
#: Trailing bytes tolerated after the JPEG EOI marker (some encoders pad).
JPEG_TRAILER_SLACK_BYTES = 4096


def sniff_format(data: bytes) -> str:
    """Return ``"jpeg"`` or ``"png"`` from the first bytes of an encoded image.

    Parameters
    ----------
    data : bytes
        Encoded image.

    Returns
    -------
    str
        ``"jpeg"`` or ``"png"``.

    Raises
    ------
    InvalidImage
        If ``data`` is empty or starts with neither signature.
    """
    if not data:
        raise InvalidImage("the request body is empty: expected the encoded JPEG or PNG frame")
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    raise InvalidImage(
        f"the body is not a JPEG or PNG image (first bytes {data[:8].hex(' ')}; "
        f"expected {JPEG_MAGIC.hex(' ')} or {PNG_MAGIC.hex(' ')})"
    )


def image_size(data: bytes) -> tuple[int, int]:
    """Read ``(width_px, height_px)`` from an encoded image's header without decoding it.

    Parameters
    ----------
    data : bytes
        A JPEG or PNG file.

    Returns
    -------
    tuple of int
        ``(width_px, height_px)``.

    Raises
    ------
    InvalidImage
        If the header is missing or malformed.
    """
    fmt = sniff_format(data)
    if fmt == "png":
        # IHDR is the first chunk: length(4) "IHDR"(4) width(4) height(4), big endian.
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidImage("the PNG header is truncated or has no IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    # JPEG: walk the marker segments up to the first start-of-frame (SOFn).
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidImage(f"the JPEG header is malformed at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    raise InvalidImage("the JPEG is truncated before its frame header (SOF)")


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_aspect_ratio: float | None = None) -> np.ndarray:
    """Decode an encoded JPEG or PNG frame into an RGB image.

    The checks, in order: non-empty; JPEG or PNG signature; a header giving a positive
    size of at most ``max_pixels`` (and, when ``max_aspect_ratio`` is given, a longer
    side at most that many times the shorter); complete (JPEG ends with EOI, PNG with IEND);
    decodable by OpenCV. EXIF orientation is ignored, so pixel coordinates are those of
    the camera sensor, as the geometry stage expects.

    Parameters
    ----------
    data : bytes
        Encoded image (JPEG or PNG, grey, colour or with alpha).
    max_pixels : int, optional
        Largest accepted ``width * height``.
    max_aspect_ratio : float, optional
        Largest accepted ``max(width, height) / min(width, height)``; None accepts any
        (frames read back from the archive: nothing stored becomes unreadable). Ingest
        passes :data:`MAX_ASPECT_RATIO`.

    Returns
    -------
    image : ndarray of shape (H, W, 3), uint8, RGB

    Raises
    ------
    InvalidImage
        If the bytes are empty, not a JPEG/PNG, truncated, too large, too elongated or
        undecodable.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImage(f"image data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    fmt = sniff_format(data)
    width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImage(f"the image is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise InvalidImage(
            f"the image is {width}x{height} pixels, an aspect ratio of {max(width, height) / min(width, height):.1f}; "
            f"at most {max_aspect_ratio:g} (longer side over shorter side) is accepted"
        )
    if fmt == "jpeg":
        tail = data[-(JPEG_TRAILER_SLACK_BYTES + 2) :]
        if JPEG_EOI not in tail:
            raise InvalidImage("the JPEG is truncated: it has no end-of-image marker (FF D9)")
    elif not data.rstrip(b"\x00").endswith(PNG_IEND):
        raise InvalidImage("the PNG is truncated: it does not end with an IEND chunk")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise InvalidImage(f"the {fmt.upper()} could not be decoded")
    if bgr.shape[:2] != (height, width):
        raise InvalidImage(f"the decoded image is {bgr.shape[1]}x{bgr.shape[0]}, its header says {width}x{height}")
    if bgr.dtype != np.uint8:  # 16-bit PNG
        bgr = (bgr / 257).round().astype(np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check that ``image`` is an RGB image array and return it C-contiguous.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    name : str
        Used in the error message.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        ``image`` itself when it is C-contiguous already, else a contiguous copy.

    Raises
    ------
    InvalidImage
        On another type, dtype, rank or channel count, or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"{name} must be a numpy array of shape (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImage(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidImage(f"{name} must have dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImage(f"{name} must not be empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def read_image_file(path) -> np.ndarray:
    """Read an image file (JPEG, PNG or any format OpenCV reads) as RGB.

    Unlike :func:`decode_image` (frames on the wire), the file's EXIF orientation is
    applied (OpenCV's ``IMREAD_COLOR``), so a photo is read the way image viewers and
    labelling tools show it and its labelled boxes line up.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ndarray of shape (H, W, 3), uint8, RGB

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    InvalidImage
        If the file cannot be decoded as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidImage(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB image as JPEG.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    quality : int, optional
        libjpeg quality, 0 to 100.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        If ``image`` is not (H, W, 3) uint8.
    """
    return _encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB image as PNG.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        If ``image`` is not (H, W, 3) uint8.
    """
    return _encode(image, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 3])


def _encode(image: np.ndarray, ext: str, params: list[int]) -> bytes:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode the image as {ext}")
    return buf.tobytes()
