"""A model folder's manifest.json (the contract with the service, docs/model-package.md), read and written, and its model.keras, loaded."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from service.package import MANIFEST

from .errors import UserError

FORMAT_VERSION = 1
KERAS_FILE = "model.keras"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions(*packages: str) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_json(path: Path, value) -> None:
    """Write atomically: a reader never sees half a file, an interrupted write loses nothing."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{model_dir} is not a trained model folder: it has no {MANIFEST}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None


def input_record(hp, preprocessing: str) -> dict:
    height, width, channels = hp.input_shape
    return {
        "name": "image",
        "height": height,
        "width": width,
        "channels": channels,
        "color_mode": hp.color_mode,
        "dtype": "float32",
        "layout": "NHWC",
        "value_range": [0, 255],
        "resize": "bilinear",
        "exif_orientation": True,
        "preprocessing": f"inside the model: {preprocessing}",
    }


def load_keras_model(model_dir: str | Path):
    """The trained model of a model folder (its model.keras), or a UserError saying why not."""
    import keras

    path = Path(model_dir) / KERAS_FILE
    if not path.is_file():
        raise UserError(f"{model_dir} has no {KERAS_FILE}: train the model first")
    try:
        return keras.models.load_model(path)
    except Exception as err:  # keras reports a damaged file as many exception types
        raise UserError(f"{path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'damaged file'})") from None


def training_manifest(*, name: str, recipe: str, hp, classes: list[str], preprocessing: str, feature_map: str,
                      features_dim: int, units: int, base: dict | None, dataset: dict, training: dict,
                      parameters: dict[str, int], evaluation: dict) -> dict:
    """The manifest a training run writes (export adds its files and checks to it)."""
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "recipe": recipe,
        "created_at": now(),
        "classes": classes,
        "input": input_record(hp, preprocessing),
        "outputs": {
            "probabilities": {"shape": [None, len(classes)]},
            "features": {"shape": [None, features_dim], "layer": feature_map, "pooling": "global_average"},
        },
        "head": {"activation": "sigmoid" if len(classes) == 2 else "softmax", "units": units},
        "base": base,
        "dataset": dataset,
        "hyperparameters": hp.as_dict(),
        "training": training,
        "parameters": parameters,
        "metrics": {"test_accuracy": evaluation["accuracy"], "test_loss": evaluation["loss"],
                    "evaluated_on": evaluation["evaluated_on"]},
        "versions": library_versions("tensorflow", "keras", "numpy"),
        "files": {"keras": KERAS_FILE},
    }


def summary_line(manifest: dict) -> str:
    m, t, p = manifest["metrics"], manifest["training"], manifest["parameters"]
    return (f"{manifest['name']:<12} {m['evaluated_on']} accuracy {m['test_accuracy']:6.1%}  loss {m['test_loss']:.3f}  "
            f"{t['epochs_run']:>3} epochs {t['seconds']:>7.1f} s  {p['total']:>10,} parameters ({p['trainable']:,} trainable)")
