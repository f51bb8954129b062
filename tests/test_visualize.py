"""`python -m training visualize`: every picture written, at its size, not blank, all on one page;
a clear line for each mistake."""

import base64
import shutil

import numpy as np
import pytest
from PIL import Image

from training.cli import main
from training.visualize import visualize

# (activation grids, filter-pattern grids) per model: every convolution and pooling layer of the
# recipes' own convnets; five stages of MobileNetV2 at 48x48 (24, 12, 6, 3 and 2 pixels).
EXPECTED = {"scratch": (9, 5), "augmented": (9, 5), "transfer": (5, 5), "finetuned": (5, 5), "transfer-features": (5, 5),
            "mnist": (5, 3), "basenet": (4, 2)}
PACKAGE = ("manifest.json", "model.keras", "evaluation.json", "curves.png", "confusion_matrix.png")
TITLE = 40  # pixels above every grid
# The test models' MobileNetV2 has random weights (base_weights "none"): its deepest pattern layer is
# silent on the grey start image, every filter, and a few filters of the layers before it.
RANDOM_BASE = ("transfer", "finetuned", "transfer-features")
SILENT_PATTERNS = {name: ["05_base_block_13_depthwise.png"] for name in RANDOM_BASE}
# The most of a pattern grid's filters that may be grey (silent) when the grid is not silent, per
# model: the MobileNetV2 grids, measured, at most 6 of 64 (block_6_depthwise). The spread floor of
# picture_std alone passes a grid about three quarters grey, which is the truth of the recipes' own
# convnets: trained 1 or 2 epochs, 40-67% of their filters' ReLUs are dead on the grey start image.
MAX_GREY_SHARE = {name: 0.25 for name in RANDOM_BASE}


def copy_model(source, target):
    """The files visualize reads, so that the session's model folders stay as they are."""
    target.mkdir()
    for name in PACKAGE:
        shutil.copy2(source / name, target / name)
    return target


def image_for(name, binary_data, multiclass_data, mnist_npz, tmp_path):
    if name == "mnist":
        with np.load(mnist_npz) as npz:
            path = tmp_path / "digit.png"
            Image.fromarray(npz["x_test"][3]).save(path)
            return path
    data = multiclass_data if name in ("basenet", "transfer-features") else binary_data
    return sorted((data / "test" / "squares").glob("*.jpg"))[0]


def picture_std(path) -> float:
    """Spread of the grey levels of a PNG below its title, white (gaps, margins) left out."""
    grey = np.asarray(Image.open(path).convert("L"), np.float64)[TITLE:]
    return float(grey[grey < 255].std())


def grey_share(path) -> float:
    """The share of a pattern grid's tiles that are plain grey (patterns.deprocess draws a silent
    filter so): of the pixels below the title, white (gaps, margins) left out, those exactly (128, 128, 128)."""
    rgb = np.asarray(Image.open(path).convert("RGB"))[TITLE:].reshape(-1, 3)
    shown = rgb[(rgb != 255).any(axis=1)]
    return float((shown == 128).all(axis=1).mean())


def check_report(report, name, model_dir):
    """Counts, sizes, pictures that are not blank, and a page that embeds every one of them."""
    out = model_dir / "report"
    assert (len(report.activations), len(report.patterns)) == EXPECTED[name]
    assert sorted(p.name for p in (out / "activations").iterdir()) == sorted(p.name for p in report.activations)
    assert sorted(p.name for p in (out / "patterns").iterdir()) == sorted(p.name for p in report.patterns)
    assert report.gradcam[0].name == f"gradcam_1_{report.predicted}.png"
    assert report.predicted == max(report.probabilities, key=report.probabilities.get)
    assert [p.name for p in report.silent_patterns] == SILENT_PATTERNS.get(name, [])
    for path in report.activations + report.patterns:
        width, height = Image.open(path).size
        assert width == 800 and height > TITLE + 20, path.name
        assert picture_std(path) > 8 or path in report.silent_patterns, f"{path.name} is blank"
    for path in report.patterns:
        share = grey_share(path)
        if path in report.silent_patterns:
            assert share == 1, f"{path.name} is silent but only {share:.0%} grey"
        else:
            assert share <= MAX_GREY_SHARE.get(name, 1), f"{path.name}: {share:.0%} of its filters grey"
    for path in report.gradcam:
        assert Image.open(path).size == (1000, 380) and picture_std(path) > 8

    page = report.index.read_text()
    pictures = sorted(out.rglob("*.png")) + [model_dir / "curves.png", model_dir / "confusion_matrix.png"]
    assert len(pictures) == sum(EXPECTED[name]) + len(report.gradcam) + 2
    for path in pictures:
        assert base64.b64encode(path.read_bytes()).decode() in page, f"{path.name} is not on the page"
    assert page.count("<img ") == len(pictures)
    assert "Grad-CAM" in page and "accuracy <b>" in page and name in page


# scratch has its own test below.
@pytest.mark.parametrize("name", ["augmented", "transfer", "finetuned", "transfer-features", "mnist", "basenet"])
def test_report_of_every_recipe(trained_models, binary_data, multiclass_data, mnist_npz, tmp_path, name):
    model_dir = copy_model(trained_models[name], tmp_path / name)
    report = visualize(model_dir, image_for(name, binary_data, multiclass_data, mnist_npz, tmp_path), steps=3)
    check_report(report, name, model_dir)


def test_scratch_report_grids_have_the_layout_of_their_layers(trained_models, binary_data, tmp_path):
    """80x80 scratch convnet: tiles enlarged by whole factors towards 96 pixels, 8 a row, 64 at most;
    every grid 800 pixels wide under a 40-pixel title."""
    model_dir = copy_model(trained_models["scratch"], tmp_path / "scratch")
    report = visualize(model_dir, sorted((binary_data / "test" / "circles").glob("*.jpg"))[0], label="squares", steps=2)
    check_report(report, "scratch", model_dir)
    heights = {f"{p.parent.name}/{p.name}": Image.open(p).size[1] - TITLE for p in report.activations + report.patterns}
    assert heights == {
        # 78x78x32 and 39x39x32 (x2): 4 rows of 78 pixels and 3 gaps of 2
        "activations/01_block1_conv.png": 318, "activations/02_block1_pool.png": 318,
        "activations/03_block2_conv.png": 606,  # 37x37 x2 = 74; 8 rows: 64 channels
        "activations/04_block2_pool.png": 734,  # 18x18 x5 = 90
        # 16, 8, 6, 3 and 1 pixels: 96-pixel tiles, 64 of 128 or 256 channels
        **{f"activations/{i:02d}_{n}.png": 782 for i, n in enumerate(
            ("block3_conv", "block3_pool", "block4_conv", "block4_pool", "feature_map"), start=5)},
        "patterns/01_block1_conv.png": 390,  # 32 filters on 48x48 images, x2
        "patterns/02_block2_conv.png": 782, "patterns/03_block3_conv.png": 782, "patterns/04_block4_conv.png": 782,
        "patterns/05_feature_map.png": 654,  # the feature map needs 80x80 images: 8 rows of 80
    }
    names = [p.name for p in report.gradcam]
    if report.predicted == "squares":
        assert names == ["gradcam_1_squares.png"]
    else:
        assert names == ["gradcam_1_circles.png", "gradcam_2_squares.png"]


def test_the_command_writes_the_report(trained_models, mnist_npz, tmp_path, capsys):
    model_dir = copy_model(trained_models["mnist"], tmp_path / "mnist")
    with np.load(mnist_npz) as npz:
        Image.fromarray(npz["x_test"][0]).save(tmp_path / "zero.png")
    assert main(["visualize", str(model_dir), "--image", str(tmp_path / "zero.png"), "--label", "7"]) == 0
    printed = capsys.readouterr().out
    assert "filter patterns [3/3] feature_map" in printed and f"report: {model_dir / 'report' / 'index.html'}" in printed
    assert (model_dir / "report" / "index.html").is_file()


@pytest.fixture
def broken_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 this is not really a JPEG")
    return path


def test_mistakes_are_one_line_each(trained_models, binary_data, broken_image, tmp_path, capsys):
    model_dir = str(trained_models["scratch"])
    image = str(sorted((binary_data / "test" / "circles").glob("*.jpg"))[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "untrained").mkdir()
    shutil.copy2(trained_models["scratch"] / "manifest.json", tmp_path / "untrained")
    cases = [
        ([model_dir, "--image", str(tmp_path / "missing.jpg")], f"error: image {tmp_path / 'missing.jpg'} does not exist"),
        ([model_dir, "--image", str(broken_image)], f"error: {broken_image} is not a readable image (expected JPEG, PNG, BMP or GIF)"),
        ([model_dir, "--image", image, "--label", "dogs"],
         "error: unknown class 'dogs' for --label; the model's classes: circles, squares"),
        ([str(tmp_path / "nowhere"), "--image", image], f"error: model folder {tmp_path / 'nowhere'} does not exist"),
        ([str(tmp_path / "empty"), "--image", image], f"error: {tmp_path / 'empty'} is not a trained model folder: it has no manifest.json"),
        ([str(tmp_path / "untrained"), "--image", image], f"error: {tmp_path / 'untrained'} has no model.keras: train the model first"),
    ]
    for arguments, message in cases:
        assert main(["visualize", *arguments]) == 2
        assert capsys.readouterr().err == message + "\n"
    assert not (trained_models["scratch"] / "report").exists()
