import csv
import hashlib

import numpy as np
from PIL import Image

from training.demo_data import PRETRAINING_SHAPES, draw_shape, generate_demo_dataset
from training.pretrain import pretraining_data


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


def test_an_outlined_shape_is_the_border_of_the_filled_one():
    filled, _ = draw_shape(np.random.default_rng(3), "pentagons", 80, 80, radius=(0.4, 0.45))
    outlined, box = draw_shape(np.random.default_rng(3), "outlined-pentagons", 80, 80, radius=(0.4, 0.45))
    filled, outlined = (np.asarray(img, dtype=np.float32) for img in (filled, outlined))
    x0, y0, x1, y1 = box
    centre = (y0 + y1) // 2, (x0 + x1) // 2
    # the same background and colour drawn from the same seed: the filled shape's inside is the
    # outlined one's background, its border the outline
    assert np.abs(filled[1, 1] - outlined[1, 1]).sum() < 1
    assert np.abs(filled[centre] - outlined[centre]).sum() > 60
    assert np.abs(filled[centre[0], x0 + 2] - outlined[centre[0], x0 + 2]).sum() < 60


def test_the_radius_option_sizes_the_shapes(tmp_path):
    root = generate_demo_dataset(tmp_path / "r", classes=("circles",), per_class={"train": 5}, size_range=(60, 60),
                                 radius=(0.1, 0.12))  # far from the default's
    with open(root / "annotations.csv") as f:
        widths = [int(row["x1"]) - int(row["x0"]) for row in csv.DictReader(f)]
    assert all(2 * 0.1 * 60 - 1 <= w <= 2 * 0.12 * 60 + 2 for w in widths)


def test_the_pretraining_data_is_generated_again_only_for_other_options(tmp_path):
    few = {"train": 1, "validation": 1}
    folder = pretraining_data(tmp_path / "p", per_class=few, seed=7, size_range=(40, 40))
    assert sorted(p.name for p in (folder / "train").iterdir()) == sorted(PRETRAINING_SHAPES)
    first = (folder / "train" / "rings" / "ring.0000.jpg").stat().st_mtime_ns
    pretraining_data(tmp_path / "p", per_class=few, seed=7, size_range=(40, 40))
    assert (folder / "train" / "rings" / "ring.0000.jpg").stat().st_mtime_ns == first  # reused
    pretraining_data(tmp_path / "p", per_class={"train": 2, "validation": 1}, seed=7, size_range=(40, 40))
    assert len(list((folder / "train" / "rings").glob("*.jpg"))) == 2  # generated again
