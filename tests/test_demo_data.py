import csv
import hashlib

import numpy as np
from PIL import Image

from training.demo_data import generate_demo_dataset


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    small = {"train": 3, "validation": 1, "test": 1}
    a = generate_demo_dataset(tmp_path / "a", per_class=small, seed=7)
    b = generate_demo_dataset(tmp_path / "b", per_class=small, seed=7)
    c = generate_demo_dataset(tmp_path / "c", per_class=small, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_layout_sizes_and_annotations(tmp_path):
    root = generate_demo_dataset(tmp_path / "d", per_class={"train": 4, "validation": 2, "test": 3}, size_range=(50, 60))
    for split, count in (("train", 4), ("validation", 2), ("test", 3)):
        for kind in ("circles", "squares", "triangles"):
            files = sorted((root / split / kind).glob("*.jpg"))
            assert len(files) == count
            for f in files:
                with Image.open(f) as img:
                    assert img.mode == "RGB" and 50 <= img.width <= 60 and 50 <= img.height <= 60
    with open(root / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (4 + 2 + 3)
    # the box lies inside the image and the shape's colour differs from the background around it
    row = rows[0]
    with Image.open(root / row["split"] / row["class"] / row["file"]) as img:
        pixels = np.asarray(img, dtype=np.float32)
    x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
    assert 0 <= x0 < x1 <= pixels.shape[1] and 0 <= y0 < y1 <= pixels.shape[0]
    centre = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
    corner = pixels[1, 1]
    assert np.abs(centre - corner).sum() > 60
