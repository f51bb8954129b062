"""Files a hostile or careless client sends, straight into service/imaging.py: every one is a
decoded picture or a Rejection with a reason, never another exception, and decoding costs memory
in proportion to the pixels, whatever the shape."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from loadtests.decode_memory import peak_mib, png_of_zeros
from loadtests.images import encode, photo_like
from service import formats, imaging
from service.errors import Reason, Rejection
from service.imaging import InputSpec

RGB = photo_like(40, 56)
SPEC = InputSpec(24, 32, 3)
MAX_PIXELS = 40_000_000


def decode(data: bytes, max_pixels: int = MAX_PIXELS):
    return imaging.picture_and_input(data, SPEC, max_pixels=max_pixels, jpeg_reduce=False)


def refusal(data: bytes, max_pixels: int = MAX_PIXELS) -> Reason:
    with pytest.raises(Rejection) as caught:
        decode(data, max_pixels)
    assert caught.value.message and "\n" not in caught.value.message
    return caught.value.reason


def iso_file(brand: bytes, compatible: tuple[bytes, ...] = ()) -> bytes:
    """The start of an ISO base media file (HEIF, AVIF): its ftyp box, then an empty meta box."""
    body = brand + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + struct.pack(">I", 8) + b"meta"


# Image formats the service does not decode, as clients send them: each a 415 naming the format.
UNSUPPORTED = {
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    "svg-with-xml-declaration": b'\xef\xbb\xbf<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg viewBox="0 0 1 1"></svg>',
    "heic": iso_file(b"heic", (b"mif1", b"heic")),
    "heif": iso_file(b"mif1", (b"heic",)),
    "avif": iso_file(b"avif", (b"mif1", b"avif")),
    "avif-by-compatible-brand": iso_file(b"mif1", (b"avif",)),
    "tiff": encode(RGB, "TIFF"),
    "ico": encode(RGB, "ICO"),
    "jpeg2000": encode(RGB, "JPEG2000"),
    "psd": b"8BPS\x00\x01" + bytes(40),
    "qoi": encode(RGB, "QOI"),
    "ppm": encode(RGB, "PPM"),
    "jpeg-xl": b"\xff\x0a\xfa\x7f" + bytes(40),
    "openexr": b"\x76\x2f\x31\x01\x02\x00\x00\x00" + bytes(40),
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
}
NAMES = {"svg": "SVG", "svg-with-xml-declaration": "SVG", "heic": "HEIF", "heif": "HEIF", "avif": "AVIF",
         "avif-by-compatible-brand": "AVIF", "tiff": "TIFF", "ico": "ICO", "jpeg2000": "JPEG 2000", "psd": "PSD",
         "qoi": "QOI", "ppm": "Netpbm", "jpeg-xl": "JPEG XL", "openexr": "OpenEXR", "eps": "EPS"}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_other_image_formats_are_unsupported_naming_the_format(name):
    with pytest.raises(Rejection) as caught:
        decode(UNSUPPORTED[name])
    assert caught.value.reason is Reason.UNSUPPORTED_FORMAT and caught.value.status == 415
    assert caught.value.message.startswith(f"{NAMES[name]} images are not supported"), caught.value.message


@pytest.mark.parametrize("data", [
    b"just some text", b"<html><body>hello</body></html>", b"%PDF-1.7\n", b"\x00" * 100, b"\x1f\x8b\x08\x00" + bytes(20),
    iso_file(b"isom", (b"mp41",)), b"BMW 3 series", b"<?xml version='1.0'?><note>no svg here</note>",
], ids=["text", "html", "pdf", "zeros", "gzip", "mp4", "text-starting-BM", "xml"])
def test_what_is_no_image_at_all_is_not_an_image(data):
    assert refusal(data) is Reason.NOT_AN_IMAGE


GOOD = {
    "jpeg": encode(RGB, "JPEG", quality=90),
    "png": encode(RGB, "PNG"),
    "png-gray-16bit": encode(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "PNG"),
    "png-palette": encode(Image.fromarray(RGB).convert("P"), "PNG"),
    "webp": encode(RGB, "WEBP", quality=80),
    "webp-lossless": encode(RGB, "WEBP", lossless=True),
    "bmp": encode(RGB, "BMP"),
    "gif": encode(Image.fromarray(RGB).convert("P"), "GIF"),
    "gif-animated": encode(Image.fromarray(RGB).convert("P"), "GIF", save_all=True,
                           append_images=[Image.fromarray(RGB[::-1]).convert("P")] * 3),
    "webp-animated": encode(Image.fromarray(RGB), "WEBP", save_all=True, append_images=[Image.fromarray(RGB[::-1])] * 3),
    "png-animated": encode(Image.fromarray(RGB), "PNG", save_all=True, append_images=[Image.fromarray(RGB[::-1])] * 3),
}
CUTS = (1, 2, 3, 8, 12, 16, 30, 64, 0.25, 0.5, 0.75, 0.9, -1)


@pytest.mark.parametrize("name", list(GOOD))
def test_a_truncated_file_of_every_format_is_a_picture_or_a_rejection(name):
    """Cut anywhere (a few bytes in, halfway, one byte short): the decoder either still gets a
    whole picture (the cut fell after the pixels) or refuses with a reason; nothing else."""
    data = GOOD[name]
    assert decode(data)[1].shape == (24, 32, 3)  # whole, it decodes
    for cut in CUTS:
        end = cut if isinstance(cut, int) and cut > 0 else int(len(data) * cut) if cut > 0 else len(data) + cut
        try:
            picture, tensor = decode(data[:end])
        except Rejection as rejection:
            # With its signature whole (12 bytes hold every one), it is called what it is.
            expected = (Reason.CORRUPT_IMAGE,) if end >= 12 else (Reason.CORRUPT_IMAGE, Reason.NOT_AN_IMAGE)
            assert rejection.reason in expected, (cut, rejection.message)
        else:
            assert tensor.shape == (24, 32, 3) and picture.ndim == 3


@pytest.mark.parametrize("name", list(GOOD))
def test_every_supported_file_is_recognised_by_its_first_12_bytes(name):
    assert formats.sniff(GOOD[name][:12]) in formats.SUPPORTED


def test_a_supported_signature_with_a_broken_header_is_corrupt_not_no_image():
    for data in (b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + bytes(30), b"GIF89a\x00", b"\xff\xd8\xff\xe0\x00", b"RIFF\0\0\0\0WEBPVP8 "):
        with pytest.raises(Rejection) as caught:
            decode(data)
        assert caught.value.reason is Reason.CORRUPT_IMAGE, data
        assert "BytesIO" not in caught.value.message


def webp_header(width: int, height: int) -> bytes:
    """An (animated) WebP whose VP8X header claims a canvas of width x height, and nothing more."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x02\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    anim = b"ANIM" + struct.pack("<I", 6) + bytes(6)
    body = b"WEBP" + vp8x + anim
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_a_webp_canvas_bomb_is_refused_before_libwebp_allocates_it():
    bomb = webp_header(16383, 16383)  # 268 megapixels; libwebp would allocate 2 GB on opening it
    assert formats.webp_canvas(bomb) == (16383, 16383)
    with pytest.raises(Rejection) as caught:
        decode(bomb)
    assert caught.value.reason is Reason.TOO_MANY_PIXELS and "16383x16383" in caught.value.message
    assert formats.webp_canvas(GOOD["webp"]) == formats.webp_canvas(GOOD["webp-lossless"]) == (56, 40)


def png_with_chunk(kind: bytes, body: bytes) -> bytes:
    png = GOOD["png"]
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]  # after IHDR


def test_png_text_and_profile_bombs_are_corrupt_images():
    zeros = zlib.compress(bytes(64 << 20), 9)  # 64 MB of text in 65 kB
    assert refusal(png_with_chunk(b"zTXt", b"comment\0\0" + zeros)) is Reason.CORRUPT_IMAGE
    assert refusal(png_with_chunk(b"iCCP", b"icc\0\0" + zeros)) is Reason.CORRUPT_IMAGE


def test_an_exif_block_claiming_huge_counts_is_ignored_or_refused():
    """An EXIF IFD whose entries claim 2**32 values: Pillow reads no more than the file holds."""
    ifd = struct.pack("<H", 3) + b"".join(struct.pack("<HHII", tag, 7, 0xFFFFFFFF, 8) for tag in (0x0112, 0x010F, 0x8769))
    exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"
    data = encode(RGB, "JPEG", exif=exif)
    try:
        picture, _ = decode(data)
    except Rejection as rejection:
        assert rejection.reason is Reason.CORRUPT_IMAGE
    else:
        assert picture.shape == (40, 56, 3)


# Decoding memory: at most this many MiB per megapixel of the picture, for any shape (measured
# 2.9-17.2, docs/reliability.md; the widest shapes cost 550 MiB per megapixel before).
MIB_PER_MEGAPIXEL = 20


@pytest.mark.slow
@pytest.mark.parametrize("width,height", [(40_000_000, 1), (1, 40_000_000)], ids=["40000000x1", "1x40000000"])
def test_decoding_memory_is_bounded_by_the_pixels_whatever_the_shape(tmp_path, width, height):
    path = tmp_path / "picture.png"
    path.write_bytes(png_of_zeros(width, height, color=True))
    assert path.stat().st_size < 200_000
    limit = MIB_PER_MEGAPIXEL * width * height / 1e6
    peak = peak_mib(path, (224, 224, 3), memory_limit_mib=int(2 * limit))
    assert peak < limit, f"{peak:.0f} MiB for {width}x{height}, more than {limit:.0f}"


def test_a_picture_one_pixel_high_decodes_to_the_right_input():
    data = encode(photo_like(1, 3000), "PNG")
    picture, tensor = decode(data)
    assert picture.shape == (1, 3000, 3) and tensor.shape == (24, 32, 3)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(tensor, imaging.resize_bilinear(stored, 24, 32))
