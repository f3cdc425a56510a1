"""Decoding and validation of frame bytes (sorterbot_cloud.imaging)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sorterbot_cloud.errors import InvalidImage
from sorterbot_cloud.imaging import (
    MAX_ASPECT_RATIO,
    check_image,
    decode_image,
    encode_jpeg,
    encode_png,
    image_size,
    read_image_file,
    sniff_format,
)


@pytest.fixture
def image():
    rng = np.random.default_rng(7)
    out = np.zeros((48, 64, 3), np.uint8)
    out[:, :32] = (200, 10, 10)  # left half red: checks RGB order survives
    out[:, 32:] = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)
    return out


def test_png_round_trip_is_exact_and_rgb(image):
    decoded = decode_image(encode_png(image))
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_round_trip_keeps_size_and_colour(image):
    decoded = decode_image(encode_jpeg(image, quality=95))
    assert decoded.shape == image.shape
    red = decoded[5:40, 5:25].reshape(-1, 3).mean(axis=0)
    assert red[0] > 150 and red[2] < 60  # red stays in channel 0 (RGB, not BGR)


@pytest.mark.parametrize("ext", [".png", ".jpg"], ids=["png", "jpeg"])
def test_grey_image_becomes_three_channels(ext):
    grey = np.full((20, 30), 77, np.uint8)
    ok, buf = cv2.imencode(ext, grey)
    assert ok
    decoded = decode_image(buf.tobytes())
    assert decoded.shape == (20, 30, 3)
    assert abs(int(decoded[10, 10, 0]) - 77) <= 2


def test_png_with_alpha_drops_alpha():
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 2] = 255  # red in BGR order
    bgra[..., 3] = 128
    ok, buf = cv2.imencode(".png", bgra)
    decoded = decode_image(buf.tobytes())
    assert decoded.shape == (10, 12, 3)
    assert tuple(decoded[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("ext", [".png", ".jpg"], ids=["png", "jpeg"])
def test_image_size_reads_header(image, ext):
    ok, buf = cv2.imencode(ext, image)
    assert image_size(buf.tobytes()) == (64, 48)


def _cases(image):
    png = encode_png(image)
    jpeg = encode_jpeg(image)
    return {
        "empty": (b"", "empty"),
        "text": (b"hello world, not an image", "not a JPEG or PNG"),
        "gif": (b"GIF89a" + b"\x00" * 40, "not a JPEG or PNG"),
        "jpeg-half": (jpeg[: len(jpeg) // 2], "truncated"),
        "jpeg-no-eoi": (jpeg[:-2], "truncated"),
        "jpeg-header-only": (jpeg[:20], "truncated"),
        "png-half": (png[: len(png) // 2], "truncated"),
        "png-signature-only": (png[:8], "truncated"),
        "png-no-iend": (png[:-12], "truncated"),
        "jpeg-garbage-body": (jpeg[:200] + b"\x00" * 300 + b"\xff\xd9", "could not be decoded|header says"),
    }


CASE_IDS = [
    "empty", "text", "gif", "jpeg-half", "jpeg-no-eoi", "jpeg-header-only",
    "png-half", "png-signature-only", "png-no-iend", "jpeg-garbage-body",
]


@pytest.mark.parametrize("case", CASE_IDS, ids=CASE_IDS)
def test_bad_bytes_raise_invalid_image(image, case):
    data, message = _cases(image)[case]
    with pytest.raises(InvalidImage, match=message):
        decode_image(data)


def test_too_many_pixels_is_rejected_before_decoding(image):
    with pytest.raises(InvalidImage, match="at most 100 pixels"):
        decode_image(encode_png(image), max_pixels=100)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_aspect_ratio_over_the_limit_is_rejected_and_at_the_limit_accepted(ext):
    short_px = 8
    long_px = int(MAX_ASPECT_RATIO * short_px)
    encode = encode_png if ext == ".png" else encode_jpeg
    at_limit = encode(np.zeros((short_px, long_px, 3), np.uint8))
    assert decode_image(at_limit, max_aspect_ratio=MAX_ASPECT_RATIO).shape == (short_px, long_px, 3)
    over = encode(np.zeros((long_px + 1, short_px, 3), np.uint8))
    with pytest.raises(InvalidImage, match=f"at most {MAX_ASPECT_RATIO:g}"):
        decode_image(over, max_aspect_ratio=MAX_ASPECT_RATIO)
    assert decode_image(over).shape == (long_px + 1, short_px, 3)  # no bound: archived frames stay readable


def test_non_bytes_is_rejected():
    with pytest.raises(InvalidImage, match="must be bytes"):
        decode_image("1200.jpg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "fmt"),
    [(b"\xff\xd8\xff\xe0rest", "jpeg"), (b"\x89PNG\r\n\x1a\nrest", "png")],
    ids=["jpeg", "png"],
)
def test_sniff_format(data, fmt):
    assert sniff_format(data) == fmt


def test_encode_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_png(np.zeros((4, 4), np.uint8))


def test_decode_fuzzed_prefixes_never_crash(image):
    """Every prefix of a valid file either decodes to the full image or raises InvalidImage."""
    data = encode_jpeg(image)
    rng = np.random.default_rng(3)
    for cut in sorted(rng.choice(len(data), size=40, replace=False)):
        try:
            decoded = decode_image(data[:cut])
        except InvalidImage:
            continue
        assert decoded.shape == image.shape


def test_read_image_file_reads_rgb_and_says_what_is_wrong(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image_file(path), rgb)
    with pytest.raises(FileNotFoundError, match="no image file"):
        read_image_file(tmp_path / "missing.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    with pytest.raises(InvalidImage, match="cannot decode"):
        read_image_file(tmp_path / "garbage.png")


def test_check_image_returns_a_contiguous_rgb_array():
    image = np.zeros((5, 8, 3), np.uint8)
    assert check_image(image) is image
    strided = image[:, ::2]
    out = check_image(strided)
    assert out.flags["C_CONTIGUOUS"] and out.shape == (5, 4, 3)
    for bad, match in [(np.zeros((5, 8), np.uint8), "shape"), (np.zeros((5, 8, 3), np.float32), "dtype"),
                       (np.zeros((0, 8, 3), np.uint8), "empty"), ([[0, 0, 0]], "numpy array")]:
        with pytest.raises(InvalidImage, match=match):
            check_image(bad, "frame")
