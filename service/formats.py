"""Which image format a file is, from its first bytes: the refusal of a file Pillow is not let open.

The service decodes what training reads (JPEG, PNG, BMP, GIF's first frame) and WebP, and lets
Pillow try only those decoders: a hostile file never reaches the parsers of the thirty-odd other
formats Pillow knows. When none of them opens a file, its signature says why:
- a supported format's signature: the file is that format, but corrupt or truncated (400 `corrupt_image`);
- another image format's (HEIC, AVIF, SVG, TIFF, ...): 415 `unsupported_format`, naming it;
- none: 400 `not_an_image`.

Neither HEIC/HEIF, AVIF, SVG nor TIFF is supported on purpose: TensorFlow's decode_image, which
made the training inputs, reads none of them, so serving them would feed the model pixels
from a decoder training never saw (and SVG is a program to render, not pixels).
"""

from __future__ import annotations

import re

# Pillow's names of the formats the service decodes (an MPO is a JPEG with more pictures after it).
SUPPORTED = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF")
SUPPORTED_TEXT = "JPEG, PNG, WebP, BMP or GIF"

# (format, offset, signature): the magic numbers of the supported formats, then of the others.
_SIGNATURES = (
    ("JPEG", 0, b"\xff\xd8\xff"),
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"),
    ("GIF", 0, b"GIF87a"),
    ("GIF", 0, b"GIF89a"),
    ("TIFF", 0, b"II*\x00"),
    ("TIFF", 0, b"MM\x00*"),
    ("TIFF", 0, b"II+\x00"),  # BigTIFF
    ("TIFF", 0, b"MM\x00+"),
    ("JPEG 2000", 0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    ("JPEG 2000", 0, b"\xff\x4f\xff\x51"),
    ("JPEG XL", 0, b"\x00\x00\x00\x0cJXL \r\n\x87\n"),
    ("JPEG XL", 0, b"\xff\x0a"),
    ("PSD", 0, b"8BPS"),
    ("ICO", 0, b"\x00\x00\x01\x00"),
    ("CUR", 0, b"\x00\x00\x02\x00"),
    ("ICNS", 0, b"icns"),
    ("QOI", 0, b"qoif"),
    ("DDS", 0, b"DDS "),
    ("OpenEXR", 0, b"\x76\x2f\x31\x01"),
    ("Radiance HDR", 0, b"#?RADIANCE"),
    ("Radiance HDR", 0, b"#?RGBE"),
    ("MNG", 0, b"\x8aMNG\r\n\x1a\n"),
    ("JNG", 0, b"\x8bJNG\r\n\x1a\n"),
    ("BPG", 0, b"BPG\xfb"),
    ("FLIF", 0, b"FLIF"),
    ("XCF", 0, b"gimp xcf"),
    ("FITS", 0, b"SIMPLE  ="),
    ("EPS", 0, b"%!PS"),
    ("EPS", 0, b"\xc5\xd0\xd3\xc6"),
    ("WMF", 0, b"\xd7\xcd\xc6\x9a"),
    ("EMF", 40, b" EMF"),
    ("DICOM", 128, b"DICM"),
)
# ISO base media files (HEIF, AVIF) say what they are by the brand of their ftyp box.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
_NETPBM = re.compile(rb"P[1-7][ \t\r\n]")
_SVG = re.compile(rb"<svg[\s>/]", re.IGNORECASE)
_XML_OR_SVG_START = re.compile(rb"(<\?xml|<!--|<!doctype\s+svg|<svg)", re.IGNORECASE)


def sniff(data: bytes) -> str | None:
    """The image format `data` starts like (WEBP, HEIF, AVIF, SVG, TIFF, ...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return _iso_brand(data)
    if data[:2] == b"BM" and data[6:10] == bytes(4):  # the magic, then 4 reserved zero bytes
        return "BMP"
    for name, offset, signature in _SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return name
    if _NETPBM.match(data[:3]):
        return "Netpbm"
    text = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 byte order mark, blank lines
    if _XML_OR_SVG_START.match(text) and _SVG.search(data[:65536]):
        return "SVG"
    return None


def _iso_brand(data: bytes) -> str | None:
    box_size = int.from_bytes(data[:4], "big")
    brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(box_size, 64), 4)}  # major, then compatible brands
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None  # a video (mp4, mov) or another ISO file: not an image


def webp_canvas(data: bytes) -> tuple[int, int] | None:
    """A WebP file's canvas (width, height) from its header, or None. libwebp allocates the
    canvas (twice, 4 bytes per pixel) as soon as Pillow opens the file, before its size can be
    checked: a 100-byte file claiming 16383 x 16383 would cost 2 GB."""
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None
