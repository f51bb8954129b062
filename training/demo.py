"""`make demo`: the whole pipeline on the built-in demo dataset, offline, in a few minutes on 2 cores.

Generate the data, train the ladder, export and register the models, then serve them with
`bentoml serve` and classify a few test images over HTTP. Small images (96x96) and a few epochs
per rung keep it short; the recipes are the real ones. The transfer rungs' base: the weights of
--base-weights when given; else ImageNet's when they can be had (cached or downloadable); else,
offline, a MobileNetV2 the demo pretrains itself on a second generated dataset of other shapes
(training/pretrain.py), passed to the transfer rung as `--base-weights models/demo-base/base.keras`
would pass it. The summary says which (the manifests record it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import requests

from .config import LADDER, LADDER_NAMES
from .demo_data import generate_demo_dataset
from .errors import UserError
from .manifest import MANIFEST, read_manifest
from .pipeline import run_pipeline

IMAGE_SIZE = (96, 96)
EPOCHS = {"scratch": 12, "augmented": 15, "transfer": 8, "finetune": 5}
# Offline: the base the demo pretrains (models/demo-base/, beside the ladder) and what it is trained on.
BASE_DIR = "demo-base"
PRETRAINING = {"per_class": {"train": 900, "validation": 50}, "epochs": 3, "batch_size": 64, "learning_rate": 3e-3}
# A base pretrained for a minute on generated shapes is far from ImageNet's: its frozen features need
# more epochs of the head, and fine-tuning a larger rate, than real weights do.
OWN_BASE_EPOCHS = {"transfer": 30, "finetune": 10}
OWN_BASE_FINETUNE_RATE = 5e-4


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
    base_weights, origin = _base(base_weights, models_dir, data)
    own = origin is not None
    per_recipe = {recipe: {"epochs": epochs or (OWN_BASE_EPOCHS.get(recipe, n) if own else n)} for recipe, n in EPOCHS.items()}
    if own:
        per_recipe["finetune"]["learning_rate"] = OWN_BASE_FINETUNE_RATE
    manifests = run_pipeline(str(data), models_dir=models_dir, per_recipe=per_recipe, image_size=IMAGE_SIZE,
                             base_weights=base_weights)
    transfer = next(m for m in manifests if m["recipe"] == "transfer")["base"]
    print(f"\nthe transfer rungs' base: {origin or transfer['weights_source']}")
    serve_and_classify([m["name"] for m in manifests], data)
    return manifests


def _base(base_weights: str | None, models_dir: Path, data: Path) -> tuple[str, str | None]:
    """The --base-weights of the transfer rungs, and (when the demo pretrained it) where it came from."""
    from .bases import imagenet_available
    from .config import resolve

    if base_weights is not None:
        return base_weights, None
    hp = resolve("transfer", image_size=IMAGE_SIZE)
    if imagenet_available(hp.base, hp.input_shape, alpha=hp.alpha):
        return "imagenet", None
    from .pretrain import describe, pretrain_base, pretraining_data

    print("note: ImageNet weights cannot be downloaded and are not cached in ~/.keras/models: the demo pretrains "
          "its own MobileNetV2 base on other generated shapes (pass --base-weights PATH to use a local file)")
    options = dict(PRETRAINING)
    pretraining = pretraining_data(data.parent / f"{data.name}-pretraining", per_class=options.pop("per_class"), seed=7)
    record = pretrain_base(pretraining, models_dir / BASE_DIR, image_size=IMAGE_SIZE, **options)
    return record["model"], describe(record)


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
