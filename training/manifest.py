"""manifest.json: the contract with the service (docs/model-package.md), read and written here."""

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
