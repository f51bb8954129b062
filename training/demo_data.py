"""The built-in demo dataset: generated pictures of shapes that a small convnet can learn.

Written as an ordinary image folder (`DIR/{train,validation,test}/<class>/*.jpg`), so the demo goes
through exactly the loading code that real data goes through. Everything is drawn from one seed:
the same seed gives the same files. Each image is a coloured shape (circle, square or triangle) of
random size, colour, tilt and position (near the centre) on a noisy gradient background; `annotations.csv`
records where the shape is, which lets tests check that a heatmap points at the object.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circles", "squares", "triangles")
SPLITS = ("train", "validation", "test")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A diagonal two-colour gradient with pixel noise: no class information, some texture."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(width, height)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_polygon(kind: str, cx: float, cy: float, r: float, tilt: float) -> list[tuple[float, float]]:
    """Corners of an upright square or triangle, tilted by `tilt` radians."""
    corners = 4 if kind == "squares" else 3
    rotation = (math.pi / 4 if kind == "squares" else -math.pi / 2) + tilt
    return [
        (cx + r * math.cos(rotation + 2 * math.pi * k / corners), cy + r * math.sin(rotation + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def draw_shape(rng: np.random.Generator, kind: str, width: int, height: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One picture of `kind` and its bounding box (x0, y0, x1, y1)."""
    background = _background(rng, width, height)
    img = Image.fromarray(background, "RGB")
    # Roughly centred, like the subjects of photographs: the seed's convnet ends in Flatten, which
    # learns little translation invariance from a few hundred images.
    r = rng.uniform(0.2, 0.3) * min(width, height)
    cx = width / 2 + rng.uniform(-1, 1) * (width / 2 - r) * 0.5
    cy = height / 2 + rng.uniform(-1, 1) * (height / 2 - r) * 0.5
    # A colour far from the background's mean so that the shape is always visible.
    mean = background.reshape(-1, 3).mean(axis=0)
    colour = np.where(mean > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3)).astype(int)
    draw = ImageDraw.Draw(img)
    if kind == "circles":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(colour))
    else:
        # Tilted by at most 15 degrees: a few hundred images do not teach a small convnet every rotation.
        draw.polygon(_shape_polygon(kind, cx, cy, r, rng.uniform(-1, 1) * math.pi / 12), fill=tuple(colour))
    box = (int(cx - r), int(cy - r), int(math.ceil(cx + r)), int(math.ceil(cy + r)))
    return img, box


def generate_demo_dataset(
    directory: str | Path,
    *,
    classes: tuple[str, ...] = SHAPES,
    per_class: dict[str, int] | None = None,
    size_range: tuple[int, int] = (112, 160),
    seed: int = 1337,
) -> Path:
    """Write the demo dataset to `directory` and return it.

    `per_class` gives the number of images per class in each split (default 100/30/40: 510 images
    for three classes). Image sides vary within `size_range` so that resizing is exercised.
    """
    unknown = set(classes) - set(SHAPES)
    if unknown:
        raise ValueError(f"unknown demo classes {sorted(unknown)}; choose from {SHAPES}")
    per_class = per_class or {"train": 100, "validation": 30, "test": 40}
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        for kind in classes:
            folder = directory / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class.get(split, 0)):
                width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
                img, box = draw_shape(rng, kind, width, height)
                name = f"{kind[:-1]}.{i:04d}.jpg"
                img.save(folder / name, quality=92)
                rows.append((split, kind, name, *box))
    with open(directory / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "class", "file", "x0", "y0", "x1", "y1"))
        writer.writerows(rows)
    return directory
