"""Model packages from the BentoML model store: find them, read and check their manifest.

Each model in the store holds the package of docs/model-package.md: manifest.json (the contract)
and the exported model.onnx. Everything the service needs to know about a model comes from the
manifest; the version it reports is the store's version of the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from .imaging import InputSpec
from .settings import ModelRef

MANIFEST = "manifest.json"


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
    onnx_sha256: str | None

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

    def check_onnx(self) -> None:
        """Raise ModelError unless model.onnx has the sha256 the manifest records."""
        if self.onnx_sha256 is None:
            return
        digest = hashlib.sha256()
        with self.onnx_path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != self.onnx_sha256:
            raise ModelError(f"model {self.name}:{self.version}: {self.onnx_path} is corrupt (its sha256 differs from the manifest's)")


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
    # The export records the file's sha256 under "files" (or, in older packages, beside its path).
    sha256 = (manifest.get("files") or {}).get(onnx["path"], {}).get("sha256") or onnx.get("sha256")
    package = ModelPackage(ref.name, str(stored.tag.version), path, manifest, input_spec, classes, onnx_path, sha256)
    package.check_onnx()
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
