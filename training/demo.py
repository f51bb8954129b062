"""`make demo`: the whole pipeline on the built-in demo dataset, offline, in a few minutes on 2 cores.

Small images (96x96) and a few epochs per rung keep it short; the recipes are the real ones.
ImageNet weights are used when they can be had (cached or downloadable), else random weights,
which the demo says in one line (the manifests record it).
"""

from __future__ import annotations

from pathlib import Path

from .config import LADDER, LADDER_NAMES
from .demo_data import generate_demo_dataset
from .errors import UserError
from .export import export_line, export_model
from .manifest import MANIFEST, read_manifest
from .pipeline import run_pipeline

IMAGE_SIZE = (96, 96)
EPOCHS = {"scratch": 12, "augmented": 15, "transfer": 8, "finetune": 5}


def _check_models_dir(models_dir: Path, data: Path) -> None:
    """Refuse to mix the demo with models trained on other data under the same names."""
    for recipe in LADDER:
        model_dir = models_dir / LADDER_NAMES[recipe]
        if (model_dir / MANIFEST).is_file():
            trained_on = read_manifest(model_dir)["dataset"]["path"]
            if Path(trained_on) != data.resolve():
                raise UserError(f"{model_dir} was trained on {trained_on}, not on the demo data: "
                                "pass --models-dir to put the demo's models elsewhere")


def run_demo(*, models_dir: Path, data: Path, epochs: int | None = None, base_weights: str | None = None) -> list[dict]:
    if not (data / "train").is_dir():
        print(f"generating the demo dataset in {data}")
        generate_demo_dataset(data)
    _check_models_dir(models_dir, data)
    per_recipe = {recipe: {"epochs": epochs or n} for recipe, n in EPOCHS.items()}
    manifests = run_pipeline(str(data), models_dir=models_dir, fallback_to_random=True, per_recipe=per_recipe,
                             image_size=IMAGE_SIZE, base_weights=base_weights)
    print()
    exported = []
    for manifest in manifests:
        model_dir = models_dir / manifest["name"]
        exported.append(read_manifest(model_dir) if "export" in manifest else export_model(model_dir))
        print(export_line(exported[-1]))
    return exported
