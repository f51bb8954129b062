"""`evaluate`: score a trained model again on the test split of its dataset (or of another)."""

from __future__ import annotations

from pathlib import Path

from .config import Hyperparameters
from .data import load_datasets
from .errors import UserError
from .evaluate import write_evaluation
from .manifest import MANIFEST, load_keras_model, read_manifest, summary_line, write_json
from .recipes import core_of


def hyperparameters_of(manifest: dict) -> Hyperparameters:
    values = dict(manifest["hyperparameters"])
    values["image_size"] = tuple(values["image_size"])
    return Hyperparameters(**values)


def dataset_of(manifest: dict) -> str | None:
    """The data a model was trained on, as `load_datasets` takes it."""
    path = manifest["dataset"]["path"]
    return None if path == "keras.datasets.mnist" else path


def reevaluate(model_dir: Path, *, data: str | None = None) -> dict:
    manifest = read_manifest(model_dir)
    hp = hyperparameters_of(manifest)
    ds = load_datasets(data or dataset_of(manifest), hp, mnist=manifest["dataset"]["kind"] == "mnist",
                       cache_dir=model_dir / "cache")
    if ds.classes != manifest["classes"]:
        raise UserError(f"{data or manifest['dataset']['path']} has classes {ds.classes}, but {model_dir} was trained "
                        f"on {manifest['classes']}: evaluate it on data with the same class folders")
    model = load_keras_model(model_dir)
    result = write_evaluation(model_dir, core_of(model), ds, manifest["name"])
    manifest["metrics"] = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                           "evaluated_on": result["evaluated_on"], **({"data": str(data)} if data else {})}
    write_json(model_dir / MANIFEST, manifest)
    print(summary_line(manifest))
    return manifest
