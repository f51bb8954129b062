"""`reproduce`: the seed documents' accuracy ladder on real data, trained and exported.

The rungs of the book's table (cats vs dogs: scratch, scratch with augmentation, feature
extraction without and with augmentation, fine-tuning) plus its MNIST convnet. A rung already
trained with the same options is reused, so an interrupted reproduction picks up where it stopped;
`loadtests.accuracy` then serves the models and measures them through HTTP (`make reproduce`).
"""

from __future__ import annotations

from pathlib import Path

from .bases import build_base
from .config import resolve
from .data import load_mnist, scan_image_folder
from .errors import UserError
from .export import export_if_changed
from .ladder import FINETUNE_FROM, RUNGS, Rung
from .manifest import MANIFEST
from .pipeline import print_summary
from .runs import run_record, trained_with
from .train import train


def reproduce(*, data: str, mnist: str | None, base_weights: str, models_dir: str | Path = "models",
              only: list[str] | None = None) -> list[dict]:
    """Train and export the rungs (`only`: these names alone); return their manifests."""
    models_dir = Path(models_dir)
    names = [rung.name for rung in RUNGS]
    unknown = set(only or []) - set(names)
    if unknown:
        raise UserError(f"unknown rungs {sorted(unknown)}: choose from {', '.join(names)}")
    rungs = [rung for rung in RUNGS if not only or rung.name in only]
    check_inputs(rungs, data=data, mnist=mnist, base_weights=base_weights, models_dir=models_dir)
    manifests = []
    for rung in rungs:
        name, recipe, options = rung.name, rung.recipe, rung.options
        source = models_dir / FINETUNE_FROM if recipe == "finetune" else None
        rung_data = mnist if recipe == "mnist" else data
        extra = {"base_weights": base_weights} if recipe == "transfer" else {}
        hp = resolve(recipe, **options, **extra)
        out = models_dir / name
        try:
            done = trained_with(out, run_record(recipe, hp, rung_data, source))
        except UserError:
            print(f"{name}: trained before with other options; training it again")
            done = False
        if done:
            print(f"{name}: already trained with these options, reusing {out}")
        else:
            train(recipe, hp, data=rung_data, name=name, models_dir=models_dir, source=source, overwrite=True)
        manifests.append(export_if_changed(out))
    print_summary(manifests)
    return manifests


def check_inputs(rungs: list[Rung], *, data: str, mnist: str | None, base_weights: str, models_dir: Path) -> None:
    """Find a wrong path or a missing model now, not hours into the run when the rung needing it
    comes (MNIST is the last rung, the base weights the third)."""
    recipes = {rung.recipe for rung in rungs}
    names = {rung.name for rung in rungs}
    if recipes - {"mnist"}:
        scan_image_folder(data)
    if "mnist" in recipes:
        load_mnist(mnist)  # without a file, keras.datasets' download (or its cache) is tried now
    transfer = next((rung.options for rung in rungs if rung.recipe == "transfer"), None)
    if transfer is not None:
        hp = resolve("transfer", **transfer, base_weights=base_weights)
        build_base(hp.base, hp.input_shape, base_weights, alpha=hp.alpha)
    if "finetune" in recipes and FINETUNE_FROM not in names and not (models_dir / FINETUNE_FROM / MANIFEST).is_file():
        raise UserError(f"fine-tuning starts from {FINETUNE_FROM}, which is not in {models_dir}: "
                        f"train it too (add it to --only)")
