"""`make demo`: the whole pipeline on the built-in demo dataset, offline, in a few minutes on 2 cores.

Generate the data, train the ladder, export and register the models, then serve them with
`bentoml serve` and classify a few test images over HTTP. Small images (96x96) and a few epochs
per rung keep it short; the recipes are the real ones. ImageNet weights are used when they can be
had (cached or downloadable), else random weights, which the demo says in one line (the
manifests record it).
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
    serve_and_classify([m["name"] for m in manifests], data)
    return manifests


def serve_and_classify(names: list[str], data: Path) -> None:
    """Start the service on the models just registered, classify one test image per class, stop."""
    from loadtests.servers import serve_env, serving

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
