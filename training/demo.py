"""`make demo`: the whole pipeline on the built-in demo dataset, offline, in a few minutes on 2 cores.

Generate the data, train the ladder, export and register the models, then serve them with
`bentoml serve` and classify a few test images over HTTP. Small images (96x96) and a few epochs
per rung keep it short; the recipes are the real ones. The transfer rungs' base: the weights of
--base-weights when given; else ImageNet's when they can be had (cached or downloadable); else,
offline, a MobileNetV2 the demo pretrains itself at 64x64 on a second generated dataset of other
shapes (training/pretrain.py), in a process of its own while the rungs that need no base train,
passed to the transfer rung as `--base-weights models/demo-base/base.keras` would pass it; the
transfer rungs then run at 64x64 too, with fast feature extraction. The summary says which (the
manifests record it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import requests

from .config import LADDER, LADDER_NAMES
from .demo_data import generated_dataset
from .errors import UserError
from .manifest import MANIFEST, read_manifest
from .pipeline import print_summary, run_pipeline
from .pretrain import MODEL_FILE, Pretraining, describe, pretraining_data
from .registry import RECIPES

IMAGE_SIZE = (96, 96)
EPOCHS = {"scratch": 12, "augmented": 15, "transfer": 8, "finetune": 5}
# Offline: the base the demo pretrains (models/demo-base/, beside the ladder), what it is trained on
# and at what size. 64x64, not 96: 2.25 times fewer operations per image, so more epochs in the same
# time. Its pictures are small (64-80 pixels: cheap to draw and decode) with the demo's large shapes
# (the runs that chose this: docs/results.md, "The demo offline").
BASE_DIR = "demo-base"
PRETRAINING_DATA = {"per_class": {"train": 480, "validation": 50}, "size_range": (64, 80)}
PRETRAINING = {"image_size": (64, 64), "epochs": 7, "batch_size": 64, "learning_rate": 3e-3}
# The transfer rungs on a base of the demo's own run at its pretraining size, as ImageNet's do at 224
# (at another size its features are much worse). Its frozen features need
# many epochs of the head, cheap on features extracted once; fine-tuning needs a larger rate, and
# Adam, than real weights do.
OWN_BASE = {
    "transfer": {"image_size": PRETRAINING["image_size"], "transfer_mode": "features", "epochs": 100, "optimizer": "adam"},
    "finetune": {"image_size": PRETRAINING["image_size"], "epochs": 15, "learning_rate": 5e-4, "optimizer": "adam"},
}


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
    generated = generated_dataset(data, what="the demo dataset", keep_unrecorded=True)
    _check_models_dir(models_dir, data)
    base_weights, pretraining = _base(base_weights, models_dir, data)
    # Models trained on the folder's previous images are trained again on its new ones.
    options = {"models_dir": models_dir, "per_recipe": rung_options(own_base=pretraining is not None, epochs=epochs),
               "image_size": IMAGE_SIZE, "base_weights": base_weights, "summary": False, "overwrite": generated}
    try:
        # The rungs without a base train while the base pretrains (when it does).
        manifests = run_pipeline(str(data), rungs=tuple(r for r in LADDER if not RECIPES[r].pretrained), **options)
        origin = describe(pretraining.wait()) if pretraining else None
        manifests += run_pipeline(str(data), rungs=tuple(r for r in LADDER if RECIPES[r].pretrained), **options)
    finally:
        if pretraining:
            pretraining.stop()
    print_summary(manifests)
    transfer = next(m for m in manifests if m["recipe"] == "transfer")["base"]
    print(f"\nthe transfer rungs' base: {origin or transfer['weights_source']}")
    serve_and_classify([m["name"] for m in manifests], data)
    return manifests


def rung_options(*, own_base: bool, epochs: int | None = None) -> dict[str, dict]:
    """Each rung's options beyond IMAGE_SIZE: its epochs (`epochs` for all when given), and the
    OWN_BASE options on a base the demo pretrained itself."""
    per_recipe = {recipe: {"epochs": n, **(OWN_BASE.get(recipe, {}) if own_base else {})} for recipe, n in EPOCHS.items()}
    for options in per_recipe.values():
        options["epochs"] = epochs or options["epochs"]
    return per_recipe


def _base(base_weights: str | None, models_dir: Path, data: Path) -> tuple[str, Pretraining | None]:
    """The --base-weights of the transfer rungs, and the pretraining of the demo's own base when it makes one
    (started: the file it names is there once the pretraining is waited for)."""
    from .bases import imagenet_available
    from .config import resolve

    if base_weights is not None:
        return base_weights, None
    hp = resolve("transfer", image_size=IMAGE_SIZE)
    if imagenet_available(hp.base, hp.input_shape, alpha=hp.alpha):
        return "imagenet", None
    print("note: ImageNet weights cannot be downloaded and are not cached in ~/.keras/models: the demo pretrains "
          "its own MobileNetV2 base on other generated shapes (pass --base-weights PATH to use a local file)")
    shapes = pretraining_data(data.parent / f"{data.name}-pretraining", seed=7, **PRETRAINING_DATA)
    out = models_dir / BASE_DIR
    pretraining = Pretraining(shapes, out, **PRETRAINING)
    print("its pretraining runs in a process of its own while the rungs that need no base train (a base pretrained "
          f"with the same options is reused; its progress: {pretraining.log})")
    return str((out / MODEL_FILE).resolve()), pretraining


def serve_and_classify(names: list[str], data: Path) -> None:
    """Start the service on the models just registered, classify one test image per class, stop."""
    from service.launch import serve_env, serving

    print("\nserving them: bentoml serve service.service:ImageClassifier")
    samples = [sorted(folder.glob("*.jpg"))[0] for folder in sorted((data / "test").iterdir()) if folder.is_dir()]
    with tempfile.TemporaryDirectory() as logs, serving(serve_env(SERVICE_MODELS=",".join(names)), Path(logs) / "server.log") as server:
        for name in names:
            files = [("images", (path.name, path.read_bytes(), "image/jpeg")) for path in samples]
            answers = requests.post(f"{server.url}/classify", files=files, data={"model": name}, timeout=60).json()
            said = ", ".join(f"{path.parent.name[:-1]} -> {a['label'][:-1]} ({a['probability']:.0%})" for path, a in zip(samples, answers))
            print(f"POST /classify model={name:<10} {said}")
    print("\nserve them yourself with `make serve`, then for example:\n"
          f"  curl -F images=@{samples[0]} localhost:3000/classify")
