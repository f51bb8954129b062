"""service/imaging.py against TensorFlow: the pixels the service feeds a model are training's.

Training decodes with tf.io.decode_image, orients, and resizes with tf.image.resize (bilinear);
the service does the same without TensorFlow. These tests compare the two on generated images
of every supported format, colour mode and EXIF orientation.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from service import imaging
from service.errors import Reason, Rejection
from service.imaging import InputSpec
from loadtests.images import encode, photo_like
from tests.service_helpers import png_bomb

tf = pytest.importorskip("tensorflow")

RGB = photo_like(45, 61)
NO_LIMIT = 1 << 40


def tf_decode(data: bytes, channels: int) -> np.ndarray:
    return tf.io.decode_image(data, channels=channels, expand_animations=False).numpy()


# Files TensorFlow decodes, paired with the channel counts it decodes them to.
FILES = {
    "jpeg-rgb-420": (encode(RGB, "JPEG", quality=85, subsampling=2), (3, 1)),
    "jpeg-rgb-444": (encode(RGB, "JPEG", quality=95, subsampling=0), (3, 1)),
    "jpeg-gray": (encode(RGB[..., 0], "JPEG", quality=90), (3, 1)),
    "png-rgb": (encode(RGB, "PNG"), (3, 1)),
    "png-rgba": (encode(np.dstack([RGB, RGB[..., :1]]), "PNG"), (3, 1)),
    "png-palette": (encode(Image.fromarray(RGB).convert("P"), "PNG"), (3, 1)),
    "png-gray": (encode(RGB[..., 1], "PNG"), (3, 1)),
    "png-gray-alpha": (encode(Image.fromarray(np.dstack([RGB[..., 1], RGB[..., 2]]), "LA"), "PNG"), (3, 1)),
    "png-gray-16bit": (encode(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257 + 5), "PNG"), (3, 1)),
    "gif": (encode(Image.fromarray(RGB).convert("P"), "GIF"), (3,)),
    "bmp": (encode(RGB, "BMP"), (3,)),
    "webp": (encode(RGB, "WEBP", quality=90), (3,)),
}
CASES = [(name, channels) for name, (_, all_channels) in FILES.items() for channels in all_channels]


@pytest.mark.parametrize("name,channels", CASES, ids=[f"{n}-c{c}" for n, c in CASES])
def test_decoding_is_tensorflows(name, channels):
    data = FILES[name][0]
    ours = imaging.decode(data, channels, max_pixels=NO_LIMIT)
    np.testing.assert_array_equal(ours, tf_decode(data, channels))


@pytest.mark.parametrize("shape,size", [
    ((45, 61, 3), (24, 32)),      # down, different factors per axis
    ((5, 7, 3), (24, 32)),        # up
    ((1, 1, 3), (4, 4)),          # a single pixel
    ((100, 80, 1), (28, 28)),     # grayscale
    ((24, 32, 3), (24, 32)),      # same size
    ((600, 512, 3), (180, 180)),  # a typical photo to a typical input
    ((1, 5000, 3), (24, 32)),     # one row: gathered columns first
    ((5000, 1, 3), (24, 32)),     # one column
    ((2, 3000, 1), (28, 28)),
])
def test_resize_is_tensorflows(shape, size):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = tf.image.resize(pixels, size, method="bilinear").numpy()
    np.testing.assert_array_equal(imaging.resize_bilinear(pixels, *size), expected)


def with_orientation(pixels: np.ndarray, orientation: int, fmt: str) -> bytes:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[imaging.EXIF_ORIENTATION] = orientation
    return encode(image, fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_pillows(orientation):
    data = with_orientation(photo_like(30, 50), orientation, "PNG")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(imaging.decode(data, 3, max_pixels=NO_LIMIT), expected)
    # The picture /explain draws its heatmap over, beside the model input made from the same decode.
    picture, _ = imaging.picture_and_input(data, InputSpec(24, 32, 3), max_pixels=NO_LIMIT, jpeg_reduce=False)
    np.testing.assert_array_equal(picture, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(24, 32), (70, 9)])
def test_resize_of_stored_pixels_with_an_orientation_is_tensorflows_resize_of_the_turned_image(orientation, size):
    stored = np.random.default_rng(orientation).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    expected = tf.image.resize(imaging.orient(stored, orientation), size, method="bilinear").numpy()
    np.testing.assert_array_equal(imaging.resize_bilinear(stored, *size, orientation), expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_orientation_applied_to_tensorflows_pixels(orientation):
    data = with_orientation(photo_like(30, 50), orientation, "JPEG")
    expected = imaging.orient(tf_decode(data, 3), orientation)
    np.testing.assert_array_equal(imaging.decode(data, 3, max_pixels=NO_LIMIT), expected)


def mpo(primary: np.ndarray, second: np.ndarray, **options) -> bytes:
    """A multi-picture JPEG (MPF), as many phones and cameras write: `primary` first, `second` after it."""
    return encode(primary, "MPO", save_all=True, append_images=[Image.fromarray(second)], **options)


@pytest.mark.parametrize("channels", [3, 1])
def test_mpo_is_its_primary_jpeg_as_tensorflow_decodes_it(channels):
    primary, second = photo_like(45, 61), photo_like(20, 30, seed=3)
    data = mpo(primary, second, quality=85)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "MPO" and image.n_frames == 2  # what Pillow makes of it
    ours = imaging.decode(data, channels, max_pixels=NO_LIMIT)
    np.testing.assert_array_equal(ours, tf_decode(data, channels))
    np.testing.assert_array_equal(ours, imaging.decode(encode(primary, "JPEG", quality=85), channels, max_pixels=NO_LIMIT))


def test_preprocess_is_trainings_load_image(tmp_path):
    """The whole path, file to tensor, against training's own loader (training/data.py)."""
    data_module = pytest.importorskip("training.data")
    files = {name: data for name, (data, _) in FILES.items() if name != "webp"}  # training's formats
    files["jpeg-rotated"] = with_orientation(photo_like(30, 50), 6, "JPEG")
    files["png-mirrored"] = with_orientation(photo_like(30, 50), 2, "PNG")
    for index, (name, data) in enumerate(files.items()):
        path = tmp_path / f"{index}-{name}"
        path.write_bytes(data)
        orientation = data_module._inspect_image(str(path))  # as training reads it
        for channels in (3, 1) if name not in ("gif", "bmp") else (3,):
            spec = InputSpec(24, 32, channels)
            expected = data_module.load_image(str(path), tf.constant(orientation), (24, 32), channels).numpy()
            ours = imaging.preprocess(data, spec, max_pixels=NO_LIMIT, jpeg_reduce=False)
            assert ours.dtype == np.float32 and ours.shape == (24, 32, channels)
            np.testing.assert_allclose(ours, expected, atol=1e-4, err_msg=f"{name} to {channels} channels")


def test_jpeg_reduce_only_for_large_images_and_keeps_twice_the_input():
    spec = InputSpec(24, 32, 3)
    small = encode(photo_like(90, 120), "JPEG")  # under 4x the input: decoded whole, exactly
    np.testing.assert_array_equal(
        imaging.preprocess(small, spec, max_pixels=NO_LIMIT, jpeg_reduce=True),
        imaging.preprocess(small, spec, max_pixels=NO_LIMIT, jpeg_reduce=False))
    large = encode(photo_like(400, 520), "JPEG")
    decoded = imaging.decode(large, 3, max_pixels=NO_LIMIT, reduce_to=(24, 32))
    assert decoded.shape[0] >= 48 and decoded.shape[1] >= 64 and decoded.shape[0] < 400
    rotated = with_orientation(photo_like(520, 400), 6, "JPEG")  # stored 400 wide, shown 400 high
    decoded = imaging.decode(rotated, 3, max_pixels=NO_LIMIT, reduce_to=(24, 32))
    assert decoded.shape[0] >= 48 and decoded.shape[1] >= 64


@pytest.mark.parametrize("data,reason", [
    (b"", Reason.EMPTY_FILE),
    (b"this is not an image", Reason.NOT_AN_IMAGE),
    (encode(RGB, "JPEG")[:400], Reason.CORRUPT_IMAGE),
    (encode(RGB, "PNG")[:300], Reason.CORRUPT_IMAGE),
    (encode(RGB, "TIFF"), Reason.UNSUPPORTED_FORMAT),
    (encode(np.zeros((60, 50), np.uint8), "PNG"), Reason.TOO_MANY_PIXELS),
], ids=["empty", "text", "truncated-jpeg", "truncated-png", "tiff", "over-pixel-limit"])
def test_bad_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejection) as caught:
        imaging.decode(data, 3, max_pixels=2999)
    assert caught.value.reason is reason
    assert caught.value.message


@pytest.mark.slow
def test_pixel_limit_is_checked_before_decoding():
    bomb = png_bomb(20000, 20000)  # 400 MB of pixels (1.2 GB as RGB) in a small file
    assert len(bomb) < 1_000_000
    with pytest.raises(Rejection) as caught:
        imaging.decode(bomb, 3, max_pixels=40_000_000)
    assert caught.value.reason is Reason.TOO_MANY_PIXELS
    assert "20000x20000" in caught.value.message
