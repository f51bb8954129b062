"""The demo's own pretrained base, for when ImageNet weights cannot be had (offline, nothing cached).

A randomly initialised MobileNetV2 passes almost no signal (its pooled features are of the order of
1e-10), so a frozen one gives the transfer rungs nothing to learn from. The demo therefore
pretrains the base itself, on a second generated dataset of a different task (demo_data's
PRETRAINING_SHAPES: rings, crosses, stars, pentagons, hexagons, half discs, ellipses, and the last
six as outlines), and the transfer rungs start from it through `--base-weights PATH` as any user's
own pretraining would: the transfer learning of the lessons, with a source task made here instead
of ImageNet.

The pretraining model is the base with a softmax on its pooled features, trained end to end and
saved whole as `base.keras` (the base is its layer "base"), with `pretraining.json` saying what it
was trained on and how well it learnt it. Same options, same data: the saved base is reused.
`Pretraining` runs it in a process of its own, its output in `pretraining.log`, so that the demo
trains the rungs that need no base meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
from keras import layers

from .bases import PreprocessInput, build_base
from .config import resolve
from .data import class_folders, load_datasets
from .demo_data import PRETRAINING_SHAPES, RADIUS, SIZE_RANGE, generated_dataset, generated_with
from .errors import UserError
from .manifest import write_json
from .recipes import compile_model, output_layer
from .runs import CACHE_DIR
from .train import fit_verbosity

MODEL_FILE = "base.keras"
RECORD_FILE = "pretraining.json"
LOG_FILE = "pretraining.log"
# What the transfer rung's base is frozen with: BatchNormalization runs on its moving statistics.
# Keras' MobileNetV2 updates them with momentum 0.999, which after a few hundred steps still holds
# most of their initial values (mean 0, variance 1); 0.9 follows the data within tens of steps.
BATCH_NORM_MOMENTUM = 0.9


def pretraining_data(directory: Path, *, per_class: dict[str, int], seed: int, size_range: tuple[int, int] = SIZE_RANGE,
                     radius: tuple[float, float] = RADIUS) -> Path:
    """The pretraining dataset in `directory`, generated there unless it already holds these options' images."""
    generated_dataset(directory, what=f"the pretraining dataset ({', '.join(PRETRAINING_SHAPES)})",
                      classes=PRETRAINING_SHAPES, per_class=per_class, seed=seed, size_range=size_range, radius=radius)
    return directory


def pretrain_base(data: Path, out: Path, *, image_size: tuple[int, int], epochs: int, alpha: float = 0.35,
                  batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 1337) -> dict:
    """Train MobileNetV2 (alpha `alpha`, random weights) on the image folder `data`; save it to
    out/base.keras and return the record of out/pretraining.json (its "model" is the file's path)."""
    train = Path(data) / "train"  # load_datasets says what is wrong with a folder without it
    classes = class_folders(train) if train.is_dir() else []
    options = {"data": str(Path(data).resolve()), "classes": classes,
               # a folder generated again with other options holds other images
               "generated": generated_with(data),
               "architecture": "mobilenet_v2", "alpha": alpha,
               "image_size": list(image_size), "epochs": epochs, "batch_size": batch_size,
               "learning_rate": learning_rate, "optimizer": "adam", "lr_schedule": "cosine", "seed": seed}
    record_path = out / RECORD_FILE
    if record_path.is_file() and (out / MODEL_FILE).is_file():
        stored = json.loads(record_path.read_text())
        if stored.get("options") == options:
            print(f"pretrained base: reusing {out / MODEL_FILE} (trained with these options)")
            return stored
    out.mkdir(parents=True, exist_ok=True)
    hp = resolve("transfer", image_size=tuple(image_size), batch_size=batch_size, seed=seed, augment=False)
    keras.utils.set_random_seed(seed)
    ds = load_datasets(data, hp, mnist=False, cache_dir=out / CACHE_DIR)
    print(f"pretraining MobileNetV2 alpha {alpha:g} from random weights on {data}: {ds.info['sizes']['train']} "
          f"training images, classes {', '.join(ds.classes)}")
    base, _ = build_base("mobilenet_v2", hp.input_shape, "none", alpha=alpha)
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    inputs = keras.Input(shape=hp.input_shape, name="image")
    x = PreprocessInput("mobilenet_v2", name="preprocess_input")(inputs)
    x = layers.GlobalAveragePooling2D(name="features")(base(x))
    model = keras.Model(inputs, output_layer(len(ds.classes))(x), name="pretraining")
    # A few epochs from random weights: a rate decaying to 0 (cosine) ends much further than a constant one.
    steps = int(ds.train.cardinality()) * epochs
    compile_model(model, len(ds.classes), optimizer="adam",
                  learning_rate=keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps))
    start = time.perf_counter()
    history = model.fit(ds.train, validation_data=ds.validation, epochs=epochs, verbose=fit_verbosity(), shuffle=False)
    seconds = time.perf_counter() - start
    model.save(out / MODEL_FILE)
    # Measured as the transfer rung will use the base: inference mode, on the moving statistics.
    loss, accuracy = model.evaluate(ds.validation, verbose=0)
    record = {"model": str((out / MODEL_FILE).resolve()), "options": options, "classes": ds.classes,
              "dataset": ds.info, "epochs_run": len(history.history["loss"]), "seconds": round(seconds, 1),
              "validation_accuracy": float(accuracy), "validation_loss": float(loss)}
    write_json(record_path, record)
    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    return record


class Pretraining:
    """`pretrain_base(data, out, **options)` in a Python process of its own, everything it prints
    (TensorFlow's own lines too) in out/pretraining.log. On 2 cores two TensorFlow processes get
    more work done than one (docs/results.md, "The demo offline"): the demo trains its first rungs
    meanwhile."""

    def __init__(self, data: Path, out: Path, **options):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.log = out, out / LOG_FILE
        arguments = json.dumps({"data": str(data), "out": str(out), "options": options})
        with open(self.log, "w") as log:
            self._process = subprocess.Popen([sys.executable, "-m", "training.pretrain", arguments], stdout=log,
                                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait(self) -> dict:
        """The record of out/pretraining.json once the process has ended; a UserError if it failed."""
        if self._process.poll() is None:
            print(f"waiting for the base's pretraining to finish (its progress: {self.log})")
        code = self._process.wait()
        if code != 0:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
            raise UserError(f"pretraining the base failed (exit code {code}): {lines[-1] if lines else 'no output'}; "
                            f"its output: {self.log}")
        return json.loads((self.out / RECORD_FILE).read_text())

    def stop(self) -> None:
        """End the process if it still runs (the demo stopped before it needed the base)."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()


def _main(arguments: str) -> int:
    """The process Pretraining starts: `python -m training.pretrain '{"data": ..., "out": ..., "options": {...}}'`."""
    given = json.loads(arguments)
    try:
        pretrain_base(Path(given["data"]), Path(given["out"]), **given["options"])
    except UserError as err:
        print(f"error: {err}")
        return 2
    return 0


def describe(record: dict) -> str:
    """One line: where the base came from and how well it learnt its own task."""
    sizes, (height, width) = record["dataset"]["sizes"], record["options"]["image_size"]
    return (f"MobileNetV2 alpha {record['options']['alpha']:g} pretrained by the demo from random weights on "
            f"{len(record['classes'])} other shapes ({', '.join(record['classes'])}; {sizes['train']} images at {height}x{width}, "
            f"{record['epochs_run']} epochs, {record['seconds']:.0f} s, validation accuracy {record['validation_accuracy']:.1%}) "
            f"-> {record['model']}")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
