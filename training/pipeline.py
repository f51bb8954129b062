"""The ladder of the seed documents, in order: scratch, augmented, transfer, finetune.

Each rung is an ordinary training run; finetune starts from the transfer rung's model. A rung
already trained with the same options is skipped (so an interrupted pipeline picks up where it stopped), unless
`overwrite` asks to train it again. Each rung is then exported (SavedModel, ONNX, parity check, BentoML
store), unless its export is already of the model it holds or `export` is False.
"""

from __future__ import annotations

from pathlib import Path

from .config import LADDER, LADDER_NAMES, resolve
from .export import export_if_changed
from .manifest import read_manifest, summary_line
from .registry import RECIPES
from .runs import run_record, trained_with
from .train import train


def run_pipeline(data, *, models_dir: str | Path = "models", prefix: str = "", overwrite: bool = False,
                 fallback_to_random: bool = False, per_recipe: dict[str, dict] | None = None, export: bool = True,
                 register_model: bool = True, rungs: tuple[str, ...] = LADDER, summary: bool = True,
                 **overrides) -> list[dict]:
    """Train (and export) the rungs (default: all four, in order) into models_dir/<prefix><name>;
    print their summary unless `summary` is False; return their manifests.

    `overrides` apply to every rung, `per_recipe[recipe]` to one.
    """
    models_dir = Path(models_dir)
    manifests = []
    for recipe in rungs:
        name = prefix + LADDER_NAMES[recipe]
        out = models_dir / name
        starts_from = RECIPES[recipe].starts_from
        source = models_dir / (prefix + LADDER_NAMES[starts_from]) if starts_from else None
        hp = resolve(recipe, **{**overrides, **(per_recipe or {}).get(recipe, {})})
        if not overwrite and trained_with(out, run_record(recipe, hp, data, source)):
            print(f"{name}: already trained with these options in {out}, skipping it (--overwrite trains it again)")
            manifest = read_manifest(out)
        else:
            manifest = train(recipe, hp, data=data, name=name, models_dir=models_dir,
                             source=source, overwrite=overwrite, fallback_to_random=fallback_to_random)
        manifests.append(export_if_changed(out, register_model=register_model) if export else manifest)
    if summary:
        print_summary(manifests)
    return manifests


def print_summary(manifests: list[dict]) -> None:
    print()
    for manifest in manifests:
        print(summary_line(manifest))
