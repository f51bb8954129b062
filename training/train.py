"""One training run: data, recipe, fit, evaluation, and the model package written to models/<name>/.

The run reads like the lesson it follows: load the data, build the model, compile, fit with
callbacks (best checkpoint by validation loss, per-epoch log, backup for resuming), evaluate the
best model on the test split, plot, and write the manifest. An interrupted run resumes from its
last completed epoch when started again with the same options (runs.py); what a recipe builds is
its entry in registry.py.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from . import plots
from .config import Hyperparameters
from .data import Datasets, load_datasets
from .errors import UserError
from .evaluate import write_evaluation
from .manifest import KERAS_FILE, MANIFEST, load_keras_model, training_manifest, write_json
from .recipes import FEATURE_MAP, assemble, compile_model, core_of, feature_extractor, head_on_features
from .registry import Start, recipe_named, with_source_base
from .runs import BACKUP_DIR, CACHE_DIR, HEAD_WEIGHTS, LOG_FILE, prepare_output, read_log, run_record


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` to the logs, so the CSV log keeps training time across resumed runs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


def fit_verbosity() -> int:
    # Progress bars on a terminal; one line per epoch in a log file.
    return 1 if sys.stdout.isatty() else 2


def _callbacks(out: Path, checkpoint: Path, hp: Hyperparameters, *, validated: bool, weights_only: bool = False) -> list:
    """Checkpoint the best epoch by validation loss (without a validation split: every epoch, so the
    last is kept), log every epoch, back up for resuming, and stop early if asked."""
    previous = read_log(out).get("val_loss")
    if hp.patience and not validated:
        raise UserError("--patience stops on the validation loss: it needs a validation split")
    callbacks = [
        EpochTimer(),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_loss" if validated else "loss", save_best_only=validated,
            save_weights_only=weights_only,
            # after a resume, only an epoch better than the best before the interruption replaces it
            initial_value_threshold=min(previous) if previous and validated else None,
        ),
        keras.callbacks.CSVLogger(str(out / LOG_FILE), append=True),
        keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR), delete_checkpoint=False),
    ]
    if hp.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience))
    if hp.lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: hp.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / hp.epochs))))
    return callbacks


def _extract_features(extractor: keras.Model, dataset, label: str) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    progress = keras.utils.Progbar(None, unit_name="batch", verbose=1 if sys.stdout.isatty() else 0)
    print(f"extracting {label} features with the frozen base")
    for images, batch_labels in dataset:
        features.append(np.asarray(extractor(images, training=False)))
        labels.append(np.asarray(batch_labels))
        progress.add(1)
    return np.concatenate(features), np.concatenate(labels)


def fit_on_features(core: keras.Model, ds: Datasets, hp: Hyperparameters, out: Path) -> float:
    """Fast feature extraction: run the base once over the data, then train the head on the features.

    The features are cached in the run's folder, so a resumed run does not compute them again.
    Returns the seconds spent extracting.
    """
    import tensorflow as tf

    cache = out / CACHE_DIR / "features.npz"
    if cache.is_file():
        with np.load(cache) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        start = time.perf_counter()
        extractor = feature_extractor(core)
        train_x, train_y = _extract_features(extractor, ds.train, "training")
        arrays = {"train_x": train_x, "train_y": train_y}
        if ds.validation is not None:
            arrays["val_x"], arrays["val_y"] = _extract_features(extractor, ds.validation, "validation")
        arrays["seconds"] = np.float64(time.perf_counter() - start)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **arrays)
    head = head_on_features(core)
    compile_model(head, len(ds.classes), optimizer=hp.optimizer, learning_rate=hp.learning_rate)
    train = (tf.data.Dataset.from_tensor_slices((arrays["train_x"], arrays["train_y"]))
             .shuffle(len(arrays["train_x"]), seed=hp.seed).batch(hp.batch_size))
    validation = None
    if "val_x" in arrays:
        validation = tf.data.Dataset.from_tensor_slices((arrays["val_x"], arrays["val_y"])).batch(hp.batch_size)
    head.fit(train, validation_data=validation, epochs=hp.epochs, verbose=fit_verbosity(), shuffle=False,
             callbacks=_callbacks(out, out / HEAD_WEIGHTS, hp, validated=validation is not None, weights_only=True))
    head.load_weights(out / HEAD_WEIGHTS)  # the epoch ModelCheckpoint kept
    return float(arrays["seconds"])


def _parameters(model: keras.Model) -> dict[str, int]:
    total = model.count_params()
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return {"total": int(total), "trainable": trainable, "non_trainable": int(total - trainable)}


def train(recipe: str, hp: Hyperparameters, *, data: str | Path | None, name: str, models_dir: str | Path = "models",
          source: str | Path | None = None, overwrite: bool = False, fallback_to_random: bool = False) -> dict:
    """Train one recipe into `models_dir/name`; return its manifest."""
    entry = recipe_named(recipe)
    out = Path(models_dir) / name
    if entry.starts_from and source is not None:
        hp = with_source_base(hp, Path(source))
    run = run_record(recipe, hp, data, source)
    resumed = prepare_output(out, run, overwrite)
    keras.utils.set_random_seed(hp.seed)

    ds = load_datasets(data, hp, mnist=entry.data == "mnist", cache_dir=out / CACHE_DIR)
    sizes = ds.info["sizes"]
    print(f"{name}: {recipe} recipe on {ds.info['path']}: {sizes['train']} training, {sizes['validation']} validation, "
          f"{sizes.get('test', 0)} test images; classes {', '.join(ds.classes)}" + (" (resuming)" if resumed else ""))
    built = entry.build(hp, ds.classes, Start(Path(source) if source else None, fallback_to_random))
    core = built.core

    extraction_seconds = 0.0
    if entry.on_features(hp):
        extraction_seconds = fit_on_features(core, ds, hp, out)
        model = assemble(core, augment=False, seed=hp.seed, name=name)
        model.save(out / KERAS_FILE)
    else:
        model = assemble(core, augment=hp.augment, seed=hp.seed, name=name)
        compile_model(model, len(ds.classes), optimizer=hp.optimizer, learning_rate=hp.learning_rate)
        model.fit(ds.train, validation_data=ds.validation, epochs=hp.epochs, verbose=fit_verbosity(), shuffle=False,
                  callbacks=_callbacks(out, out / KERAS_FILE, hp, validated=ds.validation is not None))

    best = load_keras_model(out)  # the best epoch by validation loss (the last without validation)
    best_core = core_of(best)
    parameters = _parameters(model)
    with open(out / "summary.txt", "w") as f:
        best.summary(print_fn=lambda line, **_: f.write(line + "\n"), expand_nested=True, show_trainable=True)

    history = read_log(out)
    seconds = float(sum(history.pop("epoch_seconds", []))) + extraction_seconds
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else None
    write_json(out / "history.json", history)
    plots.plot_curves(history, out / "curves.png", name if name == recipe else f"{name} ({recipe})", best_epoch)
    result = write_evaluation(out, best_core, ds, name)

    manifest = training_manifest(
        name=name, recipe=recipe, hp=hp, classes=ds.classes, preprocessing=built.preprocessing,
        feature_map=FEATURE_MAP, features_dim=int(best_core.get_layer(FEATURE_MAP).output.shape[-1]),
        units=int(best_core.output.shape[-1]), base=built.base, dataset=ds.info, parameters=parameters, evaluation=result,
        training={"epochs_run": len(history.get("loss", [])), "best_epoch": best_epoch, "seconds": round(seconds, 1),
                  "resumed": resumed},
    )
    write_json(out / MANIFEST, manifest)
    for leftover in (BACKUP_DIR, CACHE_DIR):
        shutil.rmtree(out / leftover, ignore_errors=True)
    (out / HEAD_WEIGHTS).unlink(missing_ok=True)
    return manifest
