"""The built-in demo dataset: generated pictures of shapes that a small convnet can learn.

Written as an ordinary image folder (`DIR/{train,validation,test}/<class>/*.jpg`), so the demo goes
through exactly the loading code that real data goes through. Everything is drawn from one seed:
the same seed gives the same files. Each image is a coloured shape (circle, square or triangle) of
random size, colour, tilt and position (near the centre) on a noisy gradient background; `annotations.csv`
records where the shape is, which lets tests check that a heatmap points at the object.

A second dataset, of other shapes on the same backgrounds (PRETRAINING_SHAPES: rings, crosses,
stars, pentagons, hexagons, half discs, ellipses, and the last six again as outlines), is what the
demo pretrains its MobileNetV2 base on when ImageNet weights cannot be had (training/pretrain.py): a
different task whose edges, corners and curves are what the demo's classes are told apart by.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circles", "squares", "triangles")
# A shape drawn as its outline only, as thick as a ring: "outlined-stars".
OUTLINED = "outlined-"
_FILLED_PRETRAINING = ("crosses", "stars", "pentagons", "hexagons", "half-discs", "ellipses")
# Thirteen classes: more classes make the base's pooled features more general (docs/results.md,
# "The demo offline").
PRETRAINING_SHAPES = ("rings", *_FILLED_PRETRAINING, *(OUTLINED + kind for kind in _FILLED_PRETRAINING))
# Corners of each polygon and the angle of its first one (before the tilt).
_POLYGONS = {"squares": (4, math.pi / 4), "triangles": (3, -math.pi / 2), "pentagons": (5, -math.pi / 2), "hexagons": (6, 0.0)}
SPLITS = ("train", "validation", "test")
PER_CLASS = {"train": 100, "validation": 30, "test": 40}
# What generate_demo_dataset drew a folder with, written beside annotations.csv: the demo generates
# a folder of its own again when it records other options.
GENERATED_FILE = "generated.json"
# The pictures' sides (pixels) and the shapes' radius (a fraction of the smaller side), by default:
# the shape fills much of the picture, as the subject of a photograph does. The pretraining pictures
# draw theirs as large, so that the demo's base learns features at the scale the transfer rungs see
# them (docs/results.md, "The demo offline").
SIZE_RANGE = (112, 160)
RADIUS = (0.27, 0.45)


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
    """Corners of an upright square, triangle or hexagon, tilted by `tilt` radians."""
    corners, first = _POLYGONS[kind]
    rotation = first + tilt
    return [
        (cx + r * math.cos(rotation + 2 * math.pi * k / corners), cy + r * math.sin(rotation + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def _star_or_cross(kind: str, cx: float, cy: float, r: float, tilt: float) -> list[tuple[float, float]]:
    """A five-pointed star (inner radius 0.45 r) or a plus-shaped cross (arms 0.36 r wide), tilted."""
    if kind == "stars":
        points = [(0.45 * r if k % 2 else r, -math.pi / 2 + math.pi * k / 5) for k in range(10)]
    else:
        a = 0.36 * r
        corners = [(a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a)]
        points = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    return [(cx + d * math.cos(angle + tilt), cy + d * math.sin(angle + tilt)) for d, angle in points]


def draw_shape(rng: np.random.Generator, kind: str, width: int, height: int,
               radius: tuple[float, float] = RADIUS) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One picture of `kind` and its bounding box (x0, y0, x1, y1); its radius a fraction within
    `radius` of the picture's smaller side."""
    background = _background(rng, width, height)
    img = Image.fromarray(background, "RGB")
    # Roughly centred, like the subjects of photographs: the seed's convnet ends in Flatten, which
    # learns little translation invariance from a few hundred images.
    r = rng.uniform(*radius) * min(width, height)
    cx = width / 2 + rng.uniform(-1, 1) * (width / 2 - r) * 0.5
    cy = height / 2 + rng.uniform(-1, 1) * (height / 2 - r) * 0.5
    # A colour far from the background's mean so that the shape is always visible.
    mean = background.reshape(-1, 3).mean(axis=0)
    colour = np.where(mean > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3)).astype(int)
    draw = ImageDraw.Draw(img)
    fill = tuple(int(c) for c in colour)
    # An outlined shape is drawn as its filled one's border, as thick as a ring's.
    outlined = kind.startswith(OUTLINED)
    kind = kind.removeprefix(OUTLINED)
    paint = {"outline": fill, "width": max(2, int(r / 3))} if outlined or kind == "rings" else {"fill": fill}
    if kind in ("circles", "rings"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **paint)
    elif kind == "ellipses":
        # Elongated at any angle: drawn as a polygon, which Pillow's ellipse cannot tilt.
        tilt, ratio = rng.uniform(0, math.pi), rng.uniform(0.4, 0.65)
        points = [(r * math.cos(t), ratio * r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
        draw.polygon([(cx + x * math.cos(tilt) - y * math.sin(tilt), cy + x * math.sin(tilt) + y * math.cos(tilt)) for x, y in points], **paint)
    elif kind == "half-discs":
        start = float(rng.uniform(0, 360))
        draw.pieslice((cx - r, cy - r, cx + r, cy + r), start, start + 180, **paint)
    else:
        # Tilted by at most 15 degrees: a few hundred images do not teach a small convnet every rotation.
        tilt = rng.uniform(-1, 1) * math.pi / 12
        outline = _star_or_cross(kind, cx, cy, r, tilt) if kind in ("stars", "crosses") else _shape_polygon(kind, cx, cy, r, tilt)
        draw.polygon(outline, **paint)
    box = (int(cx - r), int(cy - r), int(math.ceil(cx + r)), int(math.ceil(cy + r)))
    return img, box


def _singular(kind: str) -> str:
    return kind[:-2] if kind.endswith("sses") else kind[:-1]  # circle.0000.jpg, cross.0000.jpg


def generate_demo_dataset(
    directory: str | Path,
    *,
    classes: tuple[str, ...] = SHAPES,
    per_class: dict[str, int] | None = None,
    size_range: tuple[int, int] = SIZE_RANGE,
    radius: tuple[float, float] = RADIUS,
    seed: int = 1337,
) -> Path:
    """Write the demo dataset to `directory` and return it, with generated.json recording the options.

    `per_class` gives the number of images per class in each split (default PER_CLASS, 100/30/40: 510
    images for three classes). Image sides vary within `size_range` so that resizing is exercised; a
    shape's radius is a fraction within `radius` of the picture's smaller side.
    """
    unknown = set(classes) - set(SHAPES + PRETRAINING_SHAPES)
    if unknown:
        raise ValueError(f"unknown demo classes {sorted(unknown)}; choose from {SHAPES + PRETRAINING_SHAPES}")
    options = generation_options(classes=classes, per_class=per_class, size_range=size_range, radius=radius, seed=seed)
    per_class = options["per_class"]
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        if not per_class.get(split):
            continue  # no empty split folder: the loader would take it for a split with empty classes
        for kind in classes:
            folder = directory / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class.get(split, 0)):
                width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
                img, box = draw_shape(rng, kind, width, height, radius)
                name = f"{_singular(kind)}.{i:04d}.jpg"
                img.save(folder / name, quality=92)
                rows.append((split, kind, name, *box))
    with open(directory / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "class", "file", "x0", "y0", "x1", "y1"))
        writer.writerows(rows)
    (directory / GENERATED_FILE).write_text(json.dumps(options, indent=2) + "\n")
    return directory


def generation_options(*, classes: tuple[str, ...] = SHAPES, per_class: dict[str, int] | None = None,
                       size_range: tuple[int, int] = SIZE_RANGE, radius: tuple[float, float] = RADIUS,
                       seed: int = 1337) -> dict:
    """What generate_demo_dataset records in generated.json for these options."""
    return {"classes": list(classes), "per_class": dict(per_class or PER_CLASS), "seed": seed,
            "size_range": list(size_range), "radius": list(radius)}


def generated_with(directory: Path) -> dict | None:
    """The options a folder was generated with (its generated.json), or None for a folder without one."""
    marker = Path(directory) / GENERATED_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def generated_dataset(directory: Path, *, what: str, keep_unrecorded: bool = False, **options) -> bool:
    """`directory` holding the dataset of `options` (generate_demo_dataset's): kept when its
    generated.json records them, else generated (again: what was there removed). With
    `keep_unrecorded`, a folder with train/ and no generated.json (not generated here: someone's own
    images) is used as it is. True when generated now; `what` names the dataset in the line printed."""
    directory = Path(directory)
    recorded = generated_with(directory)
    if recorded == generation_options(**options) or (keep_unrecorded and recorded is None and (directory / "train").is_dir()):
        return False
    again = directory.is_dir()
    if again:
        shutil.rmtree(directory)
    print(f"generating {what} in {directory}" + (" again: it was generated with other options" if again else ""))
    generate_demo_dataset(directory, **options)
    return True
