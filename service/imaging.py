"""An uploaded file becomes the model's input tensor exactly as training made it (docs/model-package.md).

Training decodes with `tf.io.decode_image(channels=C)`, applies the EXIF orientation and resizes
with `tf.image.resize(method="bilinear")`. Here, without TensorFlow:

- JPEG is decoded by libjpeg-turbo through simplejpeg with the fast integer DCT and smooth chroma
  upsampling: TensorFlow's defaults, so the pixels are bit-identical (Pillow uses the accurate DCT,
  which differs by up to 4 levels). Grayscale is libjpeg's own (the luma channel), as in TensorFlow.
  The rare CMYK JPEG goes to Pillow, within a few levels of TensorFlow. An MPO (a JPEG with more
  pictures after it, as many phones write) is the JPEG it starts with, for TensorFlow and here.
- Every other format is decoded by Pillow (first frame of a GIF; alpha dropped, not composited).
  Colour to grayscale uses libpng's integer weights, which TensorFlow's PNG decoder applies;
  16-bit samples keep their high byte, as libpng's strip_16 does.
- The EXIF orientation is applied to the decoded array as `PIL.ImageOps.exif_transpose` would.
- `resize_bilinear` reimplements `tf.image.resize(..., "bilinear", antialias=False)`
  (half-pixel centres) in float32 numpy.

tests/test_service_imaging.py checks all of this against TensorFlow.

An optional deviation, off by default (SERVICE_JPEG_REDUCE=1): a JPEG at least 4x larger than
the model input in both directions is decoded at a reduced scale in the DCT domain
(libjpeg-turbo's scaled IDCT: 1/2, 3/8, 1/4 or 1/8), never below 2x the input. It is faster on
large photos, but the model input then differs from training's, because bilinear resizing
without antialiasing samples a full-size image sparsely and a reduced one smoothly. That is
skew, so exactness stays the default. `python -m service.imaging PHOTO.jpg` measures both on
your own images (docs/benchmarks.md has the figures on 12-megapixel photos).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, PngImagePlugin

from . import formats
from .errors import Reason, Rejection

# Pillow's own decompression-bomb guard is replaced by ours (checked on the header, before
# decoding), so that there is one limit with one clear error.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PNG text chunks (tEXt, zTXt, iTXt) are of no use here: 4 MB of them in all, decompressed, is
# plenty (Pillow's default: 64 MB per picture); more is a corrupt image.
PngImagePlugin.MAX_TEXT_MEMORY = 4 << 20

# Pillow calls a JPEG that carries further pictures after its own (MPF: the depth map, preview or
# second view many phones and cameras append) "MPO". TensorFlow decodes such a file as the JPEG
# it starts with, and so does this module: the same path as any JPEG, the same pixels.
JPEG_FORMATS = ("JPEG", "MPO")
FORMATS = formats.SUPPORTED
# The decoders Pillow may try (its JPEG decoder is the one that opens an MPO).
_DECODERS = tuple(name for name in FORMATS if name != "MPO")
EXIF_ORIENTATION = 0x0112
# libpng's rgb_to_gray with TensorFlow's coefficients (0.299, 0.587) in 15-bit fixed point, truncated.
_GRAY_WEIGHTS = (9797, 19234, 3737)
_GRAY_BLOCK = 1 << 20  # pixels
# Reduce a JPEG in the DCT domain only if the result keeps at least this many times the model's size.
_JPEG_REDUCE_MARGIN = 2


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: height x width x channels (3: RGB, 1: grayscale)."""

    height: int
    width: int
    channels: int


def resize_bilinear(image: np.ndarray, height: int, width: int, orientation: int = 1) -> np.ndarray:
    """`tf.image.resize(orient(image, orientation), (height, width), "bilinear", antialias=False)`
    for one HWC image, without turning the whole image.

    Same arithmetic as TensorFlow's ResizeBilinear kernel with half-pixel centres, in float32:
    source coordinate (i + 0.5) * scale - 0.5, neighbours clamped to the edges.

    Only the source pixels the output samples are gathered, from the image as stored: the EXIF
    orientation maps the indices of the image as shown to the stored rows and columns, so that the
    gathers copy whole rows and pixels, and only those samples are converted to float32 (turning a
    12-megapixel photo first, or converting it whole, cost tens of milliseconds). Each source row
    the output samples is interpolated along x once, however many output rows use it (upsampling
    uses most rows twice), then pairs of those rows along y. Each output value is computed from the
    same neighbours with the same float32 operations in the same order as TensorFlow's kernel, so
    the result is the same, bit for bit (tests/test_service_imaging.py).
    """
    transpose, flip_rows, flip_columns = _ORIENTATIONS.get(orientation, _ORIENTATIONS[1])
    shown_height, shown_width = image.shape[1::-1] if transpose else image.shape[:2]
    y_low, y_high, y_lerp = _interpolation(shown_height, height)
    x_low, x_high, x_lerp = _interpolation(shown_width, width)
    # The distinct source rows the output samples, and where each output row's two neighbours are among them.
    rows, neighbours = np.unique(np.concatenate([y_low, y_high]), return_inverse=True)
    columns = np.concatenate([x_low, x_high])
    if flip_rows:
        rows = shown_height - 1 - rows
    if flip_columns:
        columns = shown_width - 1 - columns
    if transpose:  # the rows shown are the columns stored
        samples = _gather(image, columns, rows).transpose(1, 0, 2)
    else:
        samples = _gather(image, rows, columns)
    samples = samples.astype(np.float32)  # [rows, 2 * width, C]: the left neighbours, then the right ones
    left, right = samples[:, :width], samples[:, width:]
    # along x: left + (right - left) * x_lerp, in place
    right -= left
    right *= x_lerp[None, :, None]
    right += left
    top, bottom = right[neighbours[:height]], right[neighbours[height:]]
    # along y: top + (bottom - top) * y_lerp
    bottom -= top
    bottom *= y_lerp[:, None, None]
    bottom += top
    return bottom


# EXIF orientation -> (transposed, then rows flipped, columns flipped): what `orient` does.
_ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
                 5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}


# Gather columns first only when that copies at least this many times fewer pixels than rows first.
_ROWS_FIRST_UNLESS = 8


def _gather(image: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """image[rows][:, columns], holding no more than the image itself on the way.

    The output samples 2 rows and 2 columns per output pixel, and many of them repeat: a picture
    1 pixel high gives 2 x height copies of its one row. Gathering whole rows first would copy a
    2,000,000 x 1 picture's row 448 times for a 224x224 model (2.7 GB for a 6 MB picture), so the
    distinct rows and columns are gathered once each, then repeated into place. Rows first (whole
    rows are contiguous: fast), unless columns first touches far fewer pixels (a very wide
    picture); either way at most the image's own pixel count is copied.
    """
    height, width, channels = image.shape
    unique_rows, row_at = np.unique(rows, return_inverse=True)
    unique_columns, column_at = np.unique(columns, return_inverse=True)
    if len(unique_rows) * width <= _ROWS_FIRST_UNLESS * height * len(unique_columns):
        return _take_columns(image[unique_rows], columns)[row_at]
    return _take_columns(image[:, unique_columns][rows], column_at)


def _take_columns(image: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """image[:, columns], gathering the columns of rows flattened to (width * channels): copies of whole pixels."""
    channels = image.shape[2]
    flat_columns = (columns[:, None] * channels + np.arange(channels)).ravel()
    return image.reshape(len(image), -1)[:, flat_columns].reshape(len(image), len(columns), channels)


def _interpolation(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    low = np.maximum(floor, 0).astype(np.intp)
    high = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return low, high, (position - floor).astype(np.float32)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HWC array, as PIL.ImageOps.exif_transpose does."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(image, -1)
    if orientation == 7:
        return np.rot90(image.transpose(1, 0, 2), 2)
    if orientation == 8:
        return np.rot90(image, 1)
    return image


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 HWC -> HW1 as TensorFlow's PNG decoder (libpng) computes it.

    A block of pixels at a time: the 32-bit arithmetic on a whole 40-megapixel picture would
    hold 16 bytes per pixel at once."""
    flat = rgb.reshape(-1, 3)
    gray = np.empty(len(flat), np.uint8)
    for start in range(0, len(flat), _GRAY_BLOCK):
        r, g, b = (flat[start:start + _GRAY_BLOCK, i].astype(np.uint32) for i in range(3))
        gray[start:start + _GRAY_BLOCK] = (r * _GRAY_WEIGHTS[0] + g * _GRAY_WEIGHTS[1] + b * _GRAY_WEIGHTS[2]) >> 15
    return gray.reshape(*rgb.shape[:2], 1)


def decode(data: bytes, channels: int, *, max_pixels: int, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """Decode, orient and convert one file to a uint8 HWC array with `channels` channels.

    `reduce_to` (height, width): the model's input size, which allows DCT-domain downscaling of
    large JPEGs. Raises Rejection for anything that is not a decodable image within the limits.
    """
    pixels, orientation = decode_stored(data, channels, max_pixels=max_pixels, reduce_to=reduce_to)
    return np.ascontiguousarray(orient(pixels, orientation))


def decode_stored(data: bytes, channels: int, *, max_pixels: int,
                  reduce_to: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """`decode`, but the pixels as the file stores them, and the EXIF orientation (1-8) to apply."""
    if not data:
        raise Rejection(Reason.EMPTY_FILE, "the file is empty (0 bytes)")
    if (canvas := formats.webp_canvas(data)) is not None:
        _check_pixels(*canvas, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd but decodable headers
            # Only the decoders of the supported formats may parse the file (service/formats.py).
            image = Image.open(io.BytesIO(data), formats=_DECODERS)
    except Exception as err:  # no supported decoder recognises it, or one does but cannot parse its header
        raise _refusal(data, err) from None
    with image:
        _check_pixels(*image.size, max_pixels)
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if image.format in JPEG_FORMATS and image.mode in ("RGB", "L"):
                pixels = _decode_jpeg(data, channels, orientation, reduce_to)
            else:
                pixels = _decode_pillow(image, channels)
        except Rejection:
            raise
        except Exception as err:  # truncated data, bad checksums, broken streams
            raise Rejection(Reason.CORRUPT_IMAGE, f"corrupt or truncated {image.format} image: {err}") from None
    return pixels, orientation if orientation in range(1, 9) else 1


def image_pixels(source: bytes | os.PathLike) -> int:
    """Width x height of a picture from its header, without decoding it (0 if no supported
    decoder recognises it: decoding refuses it later). What admission.cost charges for."""
    try:
        if isinstance(source, bytes):
            head = source[:30]
        else:
            with open(source, "rb") as f:
                head = f.read(30)
        if (canvas := formats.webp_canvas(head)) is not None:  # opening a WebP allocates its canvas
            return canvas[0] * canvas[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=_DECODERS) as image:
                width, height = image.size
    except Exception:
        return 0
    return width * height


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise Rejection(Reason.TOO_MANY_PIXELS,
                        f"{width}x{height} image has {width * height} pixels, more than the limit of {max_pixels}")


def _refusal(data: bytes, err: Exception) -> Rejection:
    """Why a file that no supported decoder opens is refused: what its signature says it is."""
    kind = formats.sniff(data)
    if kind in FORMATS:
        why = "" if isinstance(err, Image.UnidentifiedImageError) else f": {err}"  # whose words name a BytesIO object
        return Rejection(Reason.CORRUPT_IMAGE, f"corrupt or truncated {kind} image{why}")
    if kind is not None:
        return Rejection(Reason.UNSUPPORTED_FORMAT, f"{kind} images are not supported (expected {formats.SUPPORTED_TEXT})")
    return Rejection(Reason.NOT_AN_IMAGE, f"not an image file (expected {formats.SUPPORTED_TEXT})")


def _decode_jpeg(data: bytes, channels: int, orientation: int, reduce_to: tuple[int, int] | None) -> np.ndarray:
    min_height = min_width = 0
    min_factor = 1.0
    if reduce_to is not None:
        target_h, target_w = reduce_to
        if orientation in (5, 6, 7, 8):  # the file's rows become the image's columns
            target_h, target_w = target_w, target_h
        # simplejpeg picks the strongest reduction, by a factor of 2 or more, that keeps at least
        # this size; when there is none it decodes at full size.
        min_height, min_width = target_h * _JPEG_REDUCE_MARGIN, target_w * _JPEG_REDUCE_MARGIN
        min_factor = 2.0
    pixels = simplejpeg.decode_jpeg(
        data, colorspace="RGB" if channels == 3 else "GRAY", fastdct=True, fastupsample=False,
        min_height=min_height, min_width=min_width, min_factor=min_factor, strict=True,
    )
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _decode_pillow(image: Image.Image, channels: int) -> np.ndarray:
    """The first frame as uint8 HWC. Pillow holds an RGB picture in 4 bytes per pixel (and a
    pointer per row), so conversions through Pillow are avoided where numpy does the same with
    less: grayscale is replicated into RGB as libpng (and Pillow's convert) does, and an RGB
    picture is read as it is (docs/reliability.md: the peak memory per megapixel)."""
    image.seek(0)  # the first frame of an animation, as tf.io.decode_image(expand_animations=False)
    image.load()
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale: keep the high byte, as libpng's strip_16 (TensorFlow) does.
        gray = (np.asarray(image) >> 8).astype(np.uint8)[..., None]
    elif mode in ("L", "LA", "La"):
        gray = np.asarray(image if mode == "L" else image.getchannel(0))[..., None]
    elif mode == "1":
        gray = np.asarray(image.convert("L"))[..., None]
    else:
        rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
        return rgb if channels == 3 else to_grayscale(rgb)
    return gray if channels == 1 else np.repeat(gray, 3, axis=2)


def preprocess(data: bytes, spec: InputSpec, *, max_pixels: int, jpeg_reduce: bool) -> np.ndarray:
    """One file -> float32 (height, width, channels), values 0-255: the model's input for one image."""
    return picture_and_input(data, spec, max_pixels=max_pixels, jpeg_reduce=jpeg_reduce)[1]


def picture_and_input(data: bytes, spec: InputSpec, *, max_pixels: int, jpeg_reduce: bool) -> tuple[np.ndarray, np.ndarray]:
    """One file -> the picture as a person sees it (uint8 HWC, oriented) and `preprocess`'s model input.

    The picture is a view of the decoded pixels (`orient` only flips and transposes), so asking for
    it costs nothing; the input is resized from the pixels as stored (see resize_bilinear)."""
    pixels, orientation = decode_stored(data, spec.channels, max_pixels=max_pixels,
                                        reduce_to=(spec.height, spec.width) if jpeg_reduce else None)
    return orient(pixels, orientation), resize_bilinear(pixels, spec.height, spec.width, orientation)


def _measure_jpeg_reduce() -> None:
    """`python -m service.imaging PHOTO.jpg ...`: what SERVICE_JPEG_REDUCE=1 gains and changes."""
    import argparse
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser(description=_measure_jpeg_reduce.__doc__)
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--size", type=int, nargs=2, default=(180, 180), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3)
    parser.add_argument("--repeat", type=int, default=5, help="decodes per file and setting; the fastest counts")
    args = parser.parse_args()
    spec = InputSpec(args.size[0], args.size[1], args.channels)
    print(f"{'file':40s} {'exact ms':>9s} {'reduced ms':>11s} {'speed-up':>9s} {'mean |diff|':>12s} {'max |diff|':>11s}")
    for path in args.images:
        data = path.read_bytes()
        results = {}
        for reduce in (False, True):
            timings = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                results[reduce] = preprocess(data, spec, max_pixels=1 << 40, jpeg_reduce=reduce)
                timings.append(time.perf_counter() - start)
            results[reduce, "ms"] = 1000 * min(timings)
        diff = np.abs(results[True] - results[False])
        print(f"{path.name[:40]:40s} {results[False, 'ms']:9.1f} {results[True, 'ms']:11.1f} "
              f"{results[False, 'ms'] / results[True, 'ms']:8.2f}x {diff.mean():12.2f} {diff.max():11.1f}")


if __name__ == "__main__":
    _measure_jpeg_reduce()
