"""Model packages from the BentoML model store: find them, read and check their manifest.

Each model in the store holds the package of docs/model-package.md: manifest.json (the contract)
and the exported model.onnx (and gradcam.onnx). Every file the manifest records is checked
against its size and sha256 when the package is opened, before any is loaded. Everything the service needs to know about a model comes from the
manifest; the version it reports is the store's version of the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from . import explain
from .imaging import InputSpec
from .package import MANIFEST, sha256
from .settings import ModelRef


class ModelError(Exception):
    """A configured model that cannot be served; the message is one line that names it."""


@dataclass(frozen=True)
class ModelPackage:
    name: str
    version: str
    path: Path
    manifest: dict
    input: InputSpec
    classes: tuple[str, ...]
    onnx_path: Path

    def summary(self) -> dict:
        """What GET /models says about the model (the active provider is added by the engine)."""
        metrics = self.manifest.get("metrics") or {}
        source = self.manifest.get("input", {})
        return {
            "name": self.name,
            "version": self.version,
            "recipe": self.manifest.get("recipe"),
            "classes": list(self.classes),
            "input": {"height": self.input.height, "width": self.input.width, "channels": self.input.channels,
                      "color_mode": source.get("color_mode", "rgb" if self.input.channels == 3 else "grayscale")},
            "test_accuracy": metrics.get("test_accuracy"),
            "evaluated_on": metrics.get("evaluated_on"),
            "created_at": self.manifest.get("created_at"),
        }

    def check_files(self) -> None:
        """Raise ModelError unless every file the manifest's `files` records that the package
        holds has its size and sha256 (model.keras, recorded too, stays in the training folder),
        and the files the service loads are all there."""
        name = f"model {self.name}:{self.version}"
        needed = {self.onnx_path.relative_to(self.path).as_posix()}
        if (gradcam := explain.gradcam_file(self.manifest)) is not None:
            needed.add(gradcam)
        for relative in sorted(needed):
            if not (self.path / relative).exists():
                raise ModelError(f"{name}: {self.path / relative} is missing")
        records = self.manifest.get("files") or {}
        if not isinstance(records, dict):
            raise ModelError(f"{name}: {MANIFEST} 'files' is not an object (see docs/model-package.md)")
        onnx = self.manifest["export"]["onnx"]
        if onnx["path"] not in records and onnx.get("sha256"):  # older packages: the sha256 beside the path
            records = {**records, onnx["path"]: {"sha256": onnx["sha256"]}}
        for relative, record in sorted(records.items()):
            path = (self.path / relative).resolve()
            if not path.is_relative_to(self.path.resolve()):
                raise ModelError(f"{name}: {MANIFEST} records a file outside the package: {relative}")
            if not path.is_file() or not isinstance(record, dict):
                continue
            size = path.stat().st_size
            if isinstance(record.get("bytes"), int) and size != record["bytes"]:
                raise ModelError(f"{name}: {path} is corrupt or truncated ({size} bytes; the manifest records {record['bytes']})")
            if record.get("sha256") and sha256(path) != record["sha256"]:
                raise ModelError(f"{name}: {path} is corrupt (its sha256 differs from the manifest's)")


def _store_location() -> str:
    return os.environ.get("BENTOML_HOME", "~/bentoml")


def open_package(ref: ModelRef) -> ModelPackage:
    """The model package `ref` names, checked, or ModelError."""
    try:
        stored = bentoml.models.get(ref.tag)
    except NotFound:
        raise ModelError(
            f"model {ref.tag} is not in the BentoML model store ({_store_location()}/models): export it "
            f"(python -m training export) or leave it out of SERVICE_MODELS"
        ) from None
    name = f"model {stored.tag}"
    path = Path(stored.path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelError(f"{name} has no {MANIFEST} in {path}: it is not a model package (docs/model-package.md)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{name}: {path / MANIFEST} is not valid JSON ({err})") from None
    try:
        spec = manifest["input"]
        channels = int(spec["channels"])
        input_spec = InputSpec(int(spec["height"]), int(spec["width"]), channels)
        classes = tuple(str(c) for c in manifest["classes"])
        onnx = manifest["export"]["onnx"]
        onnx_path = path / onnx["path"]
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{name}: {MANIFEST} lacks or mangles {err} (see docs/model-package.md)") from None
    if channels not in (1, 3) or min(input_spec.height, input_spec.width) < 1:
        raise ModelError(f"{name}: {MANIFEST} input must be height x width x 1 or 3, not {input_spec}")
    if not classes:
        raise ModelError(f"{name}: {MANIFEST} lists no classes")
    if not onnx_path.is_file():
        raise ModelError(f"{name}: {onnx_path} is missing")
    package = ModelPackage(ref.name, str(stored.tag.version), path, manifest, input_spec, classes, onnx_path)
    package.check_files()
    return package


def bento_model_names() -> tuple[str, ...]:
    """When a built bento is served, the names of the models it packs; otherwise ().

    BentoML then makes the bento's own folder of models the model store, <bento>/models."""
    stored = bentoml.models.list()
    if stored and (Path(stored[0].path).parents[2] / "bento.yaml").is_file():
        return tuple(sorted({model.tag.name for model in stored}))
    return ()


def store_versions(name: str) -> tuple[str, ...]:
    """Every version of model `name` in the BentoML model store (the served one among them)."""
    try:
        return tuple(str(model.tag.version) for model in bentoml.models.list(name))
    except NotFound:
        return ()


def open_packages(refs: tuple[ModelRef, ...]) -> dict[str, ModelPackage]:
    return {ref.name: open_package(ref) for ref in refs}
