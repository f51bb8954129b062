"""The image files a load test sends: a folder of real images, generated ones (offline, any size),
or phone-camera-sized photos made from real images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# A 12-megapixel phone camera's frame (width, height; 4:3), as most phones write it.
PHONE_SIZE = (4032, 3024)
EXIF_ORIENTATION = 0x0112


class ImagesError(ValueError):
    """The images asked for cannot be had; the message is one line."""


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, noisy RGB uint8 image: content a JPEG encoder and a resize both have work with."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [127 + 110 * np.sin(x / (5.0 + 3 * k) + k) * np.cos(y / (4.0 + 2 * k) + 2 * k) for k in range(3)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    """An image file's bytes: `pixels` saved by Pillow as `fmt` with its save `options`."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def generated_jpegs(count: int = 8, size: tuple[int, int] = (240, 320), seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` generated JPEGs of `size` (height, width) as (file name, bytes): images without a dataset."""
    return [(f"generated-{seed + i}.jpg", encode(photo_like(*size, seed=seed + i), "JPEG", quality=90)) for i in range(count)]


def image_files(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files under `folder` (recursively, sorted), at most `limit` of them spread over all
    subfolders (every class of a dataset's split), or ImagesError."""
    if not folder.is_dir():
        raise ImagesError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise ImagesError(f"{folder} holds no image files ({', '.join(EXTENSIONS)})")
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def read_files(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in paths]


def make_phone_photos(sources: list[Path], folder: Path, *, size: tuple[int, int] = PHONE_SIZE, seed: int = 0,
                      progress=None) -> list[Path]:
    """One 12-megapixel JPEG per source image in `folder`: upscaled (bicubic), with a little sensor-like
    noise so that the file has the detail, and so the size, of a real photo (docs/benchmarks.md, run 2,
    gives it), saved at quality 90. Every other one is stored sideways with EXIF orientation 6, as a
    phone held upright writes it, so the service also pays for applying the orientation. Existing
    files are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for index, source in enumerate(sources):
        target = folder / f"phone-{index:03d}-{source.stem}.jpg"
        if not target.exists():
            with Image.open(source) as image:
                upright = index % 2 == 1
                width, height = (size[1], size[0]) if upright else size
                big = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.int16)
            noisy = np.clip(big + rng.normal(0, 6, big.shape).astype(np.int16), 0, 255).astype(np.uint8)
            exif = Image.Exif()
            if upright:
                # The sensor's rows as the file stores them; the viewer turns them upright (orientation 6).
                noisy = np.rot90(noisy, 1)
                exif[EXIF_ORIENTATION] = 6
            partial = target.with_suffix(".partial")
            partial.write_bytes(encode(noisy, "JPEG", quality=90, exif=exif))
            partial.rename(target)
        written.append(target)
        if progress is not None:
            progress()
    return written
