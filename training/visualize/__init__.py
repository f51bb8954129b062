"""`python -m training visualize models/<name> --image FILE`: seeing inside a trained convnet.

Writes models/<name>/report/ (replacing an earlier report):

    index.html              everything below on one self-contained page, with the model's
                            training curves, confusion matrix and test metrics
    gradcam_1_<class>.png   Grad-CAM of the predicted class (gradcam_2_<class>.png: of --label)
    activations/NN_<layer>.png   the image's activations, one grid per convolution/pooling layer
    patterns/NN_<layer>.png      filter patterns of the first convolution of each block

The image is loaded exactly as training loads images (training/data.py: decode, EXIF orientation,
bilinear resize), so the report shows what the model saw. Which layers are shown, and why, is
in layers.py.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..data import _inspect_image, load_image
from ..errors import UserError
from ..evaluate import as_class_probabilities
from ..manifest import KERAS_FILE, load_keras_model, now, read_manifest
from ..recipes import FEATURE_MAP, core_of
from .activations import write_activation_grids
from .heatmaps import write_gradcam_figure
from .layers import LayerRef, activation_layers, pattern_layers
from .page import Section, metrics_tables, probability_table, write_page
from .patterns import STEPS, write_pattern_grids

REPORT_DIR = "report"


@dataclass
class Report:
    index: Path
    predicted: str
    probabilities: dict[str, float]
    gradcam: list[Path]
    activations: list[Path]
    patterns: list[Path]
    silent_patterns: list[Path]  # pattern grids in which no filter responded to the start image


def _check_inputs(model_dir: Path, image: Path, label: str | None) -> tuple[dict, int]:
    """The manifest and the image's EXIF orientation, or UserError for each mistake."""
    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir} does not exist")
    manifest = read_manifest(model_dir)
    if not (model_dir / KERAS_FILE).is_file():
        raise UserError(f"{model_dir} has no {KERAS_FILE}: train the model first")
    if not image.is_file():
        raise UserError(f"image {image} does not exist")
    orientation = _inspect_image(str(image))
    if orientation is None:
        raise UserError(f"{image} is not a readable image (expected JPEG, PNG, BMP or GIF)")
    if label is not None and label not in manifest["classes"]:
        raise UserError(f"unknown class {label!r} for --label; the model's classes: {', '.join(manifest['classes'])}")
    return manifest, orientation


def load_picture(image: Path, orientation: int, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """The model's input [H, W, C] (float32 0-255, as training loads it) and the oriented picture (uint8)."""
    import tensorflow as tf

    spec = manifest["input"]
    try:
        model_input = load_image(str(image), orientation, (spec["height"], spec["width"]), spec["channels"]).numpy()
    except tf.errors.InvalidArgumentError:
        raise UserError(f"{image} cannot be decoded as training decodes images (JPEG, PNG, BMP or GIF)") from None
    with Image.open(image) as img:
        picture = np.asarray(ImageOps.exif_transpose(img).convert("RGB" if spec["channels"] == 3 else "L"))
    return model_input, picture if picture.ndim == 3 else picture[..., None]


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _evaluation(model_dir: Path) -> dict | None:
    path = model_dir / "evaluation.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def visualize(model_dir: str | Path, image: str | Path, label: str | None = None, *, steps: int | None = None) -> Report:
    """Write the report of one model for one image; return what was written."""
    model_dir, image = Path(model_dir), Path(image)
    manifest, orientation = _check_inputs(model_dir, image, label)
    classes = manifest["classes"]
    core = core_of(load_keras_model(model_dir))
    model_input, picture = load_picture(image, orientation, manifest)
    probabilities = as_class_probabilities(core(model_input[None], training=False))[0]
    predicted = int(np.argmax(probabilities))
    print(f"{manifest['name']}: {image.name} is '{classes[predicted]}' ({probabilities[predicted]:.1%}); "
          f"writing {model_dir / REPORT_DIR}")

    out = model_dir / REPORT_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    explained = [predicted] + ([classes.index(label)] if label is not None and classes.index(label) != predicted else [])
    print(f"  Grad-CAM of {', '.join(repr(classes[c]) for c in explained)}")
    gradcam = []
    for number, c in enumerate(explained, start=1):
        path = out / f"gradcam_{number}_{_file_name(classes[c])}.png"
        write_gradcam_figure(core, model_input, picture, classes[c], c, float(probabilities[c]), c == predicted, path)
        gradcam.append(path)

    refs = activation_layers(core)
    feature_map = LayerRef(FEATURE_MAP) if LayerRef(FEATURE_MAP) in refs else refs[-1]
    print(f"  activations of {len(refs)} layers")
    activations = write_activation_grids(core, model_input, refs, out / "activations", feature_map)

    pattern_refs = pattern_layers(core)
    patterns, silent_patterns = write_pattern_grids(core, pattern_refs, out / "patterns", steps or STEPS)

    index = out / "index.html"
    write_page(index, manifest=manifest, image_name=image.name, written=now(), sections=_sections(
        model_dir, manifest, probabilities, predicted, gradcam, activations, patterns))
    print(f"report: {index}")
    return Report(index, classes[predicted], dict(zip(classes, map(float, probabilities))), gradcam, activations, patterns,
                  silent_patterns)


def _sections(model_dir, manifest, probabilities, predicted, gradcam, activations, patterns) -> list[Section]:
    training_pictures = [p for p in (model_dir / "curves.png", model_dir / "confusion_matrix.png") if p.is_file()]
    return [
        Section("prediction", "Prediction", html_before=probability_table(manifest["classes"], probabilities, predicted)),
        Section("gradcam", "Where the evidence lies: Grad-CAM",
                "The gradient of the class score (the logit) with respect to the last convolution block's activations "
                "(<code>feature_map</code>), averaged over the positions, weighs each channel; the weighted sum of "
                "the channels, negatives cut off, shows where in the image the evidence for the class lies.", gradcam),
        Section("training", "Training and test", pictures=training_pictures,
                html_before=metrics_tables(_evaluation(model_dir), manifest)),
        Section("activations", "Activations, layer by layer",
                "What each convolution and pooling layer computes from this image, one tile per channel, each "
                "channel standardised on its own (teal is its mean, yellow high, purple low; a channel found "
                "nothing of its pattern in this image is dark all over). Early layers keep edges and colours; "
                "deeper ones are coarser and more abstract. Inside a pretrained base, one layer per stage: the "
                "last one at each resolution.", activations),
        Section("patterns", "Filter patterns",
                "The image each filter responds to most, found by gradient ascent from a noisy grey image, for "
                "the first convolution of each block: simple colours and edges early, textures deeper. A filter "
                "silent on the grey start image gets no gradient and stays grey.", patterns),
    ]
