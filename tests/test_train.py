"""Training runs: every recipe writes its package, the manifest holds the contract, runs resume."""

import json
import shutil

import keras
import numpy as np
import pytest

from training import train as train_module
from training.config import resolve
from training.errors import UserError
from training.manifest import load_keras_model, read_manifest
from training.reevaluate import reevaluate
from training.runs import _same_run, run_record
from training.train import train

OUTPUTS = ("model.keras", "history.json", "training_log.csv", "curves.png", "evaluation.json",
           "confusion_matrix.png", "manifest.json", "summary.txt")


@pytest.mark.parametrize("name", ["scratch", "augmented", "transfer", "finetuned", "mnist", "basenet", "transfer-features"])
def test_every_recipe_writes_its_package(trained_models, name):
    model_dir = trained_models[name]
    for output in OUTPUTS:
        assert (model_dir / output).is_file() and (model_dir / output).stat().st_size > 0, output
    assert not (model_dir / "backup").exists() and not (model_dir / "cache").exists()
    history = json.loads((model_dir / "history.json").read_text())
    manifest = read_manifest(model_dir)
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == manifest["training"]["epochs_run"] == manifest["hyperparameters"]["epochs"]
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    assert evaluation["accuracy"] == manifest["metrics"]["test_accuracy"]
    assert np.asarray(evaluation["confusion_matrix"]).sum() == evaluation["images"] == manifest["dataset"]["sizes"]["test"]
    assert set(evaluation["per_class"]) == set(manifest["classes"])


def test_manifest_holds_the_contract(trained_models, binary_data):
    m = read_manifest(trained_models["finetuned"])
    assert m["format_version"] == 1 and m["name"] == "finetuned" and m["recipe"] == "finetune"
    assert m["classes"] == ["circles", "squares"]
    assert m["input"] == {"name": "image", "height": 48, "width": 48, "channels": 3, "color_mode": "rgb",
                          "dtype": "float32", "layout": "NHWC", "value_range": [0, 255], "resize": "bilinear",
                          "exif_orientation": True, "preprocessing": "inside the model: mobilenet_v2.preprocess_input"}
    assert m["outputs"]["probabilities"]["shape"] == [None, 2]
    assert m["outputs"]["features"] == {"shape": [None, 1280], "layer": "feature_map", "pooling": "global_average"}
    assert m["head"] == {"activation": "sigmoid", "units": 1}
    assert m["base"]["architecture"] == "mobilenet_v2" and m["base"]["alpha"] == 0.35
    assert m["base"]["weights"] == "random" and m["base"]["from_model"] == "transfer"
    # MobileNetV2 is fine-tuned whole by default: every layer with weights but BatchNormalization
    assert m["base"]["unfrozen_layers"] == m["base"]["layers"] == 154
    assert len(m["base"]["unfrozen"]) == 52 and "Conv_1" in m["base"]["unfrozen"] and "Conv1" in m["base"]["unfrozen"]
    assert m["dataset"] == {"kind": "directory", "path": str(binary_data.resolve()),
                            "sizes": {"train": 20, "validation": 8, "test": 12},
                            "validation_source": "folder", "skipped_files": 0}
    hp = m["hyperparameters"]
    assert hp["learning_rate"] == 1e-5 and hp["image_size"] == [48, 48] and hp["seed"] == 1337 and hp["augment"]
    assert set(m["training"]) == {"epochs_run", "best_epoch", "seconds", "resumed"} and m["training"]["seconds"] > 0
    assert m["parameters"]["total"] == m["parameters"]["trainable"] + m["parameters"]["non_trainable"]
    assert 0 <= m["metrics"]["test_accuracy"] <= 1 and m["metrics"]["evaluated_on"] == "test"
    assert {"python", "tensorflow", "keras", "numpy"} <= set(m["versions"])
    assert m["created_at"].endswith("+00:00")
    scratch = read_manifest(trained_models["scratch"])
    assert scratch["base"] is None and scratch["outputs"]["features"]["shape"] == [None, 256]
    mnist = read_manifest(trained_models["mnist"])
    assert mnist["input"]["channels"] == 1 and mnist["input"]["color_mode"] == "grayscale"
    assert mnist["classes"] == [str(d) for d in range(10)] and mnist["head"]["activation"] == "softmax"


def _trainable_layers(model):
    return sorted({w.path.split("/")[0] for w in model.trainable_weights})


def test_trained_transfer_and_finetune_models_train_exactly_their_layers(trained_models):
    transfer = load_keras_model(trained_models["transfer"])
    finetuned = load_keras_model(trained_models["finetuned"])
    assert _trainable_layers(transfer) == ["head_dense", "predictions"]
    base = finetuned.get_layer("classifier").get_layer("base")
    convolutions = sorted(layer.name for layer in base.layers
                          if layer.weights and not isinstance(layer, keras.layers.BatchNormalization))
    assert _trainable_layers(finetuned) == sorted(convolutions + ["head_dense", "predictions"])
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    features = read_manifest(trained_models["transfer-features"])
    assert features["hyperparameters"]["transfer_mode"] == "features" and not features["hyperparameters"]["augment"]
    with pytest.raises(ValueError):
        load_keras_model(trained_models["transfer-features"]).get_layer("augmentation")


def test_a_trained_model_refuses_to_be_overwritten_silently(trained_models, models_dir, multiclass_data):
    with pytest.raises(UserError, match="already holds a trained model; pass --overwrite"):
        train("basenet", resolve("basenet", epochs=1), data=multiclass_data, name="basenet", models_dir=models_dir)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_epoch(tmp_path, multiclass_data, monkeypatch):
    hp = resolve("basenet", epochs=3)
    original = train_module._callbacks
    monkeypatch.setattr(train_module, "_callbacks", lambda *a, **k: original(*a, **k) + [_Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        train("basenet", hp, data=multiclass_data, name="b", models_dir=tmp_path)
    assert (tmp_path / "b" / "backup").is_dir() and not (tmp_path / "b" / "manifest.json").exists()
    monkeypatch.setattr(train_module, "_callbacks", original)
    with pytest.raises(UserError, match="interrupted run with other options"):
        train("basenet", resolve("basenet", epochs=4), data=multiclass_data, name="b", models_dir=tmp_path)
    manifest = train("basenet", hp, data=multiclass_data, name="b", models_dir=tmp_path)
    assert manifest["training"]["resumed"] and manifest["training"]["epochs_run"] == 3
    log = (tmp_path / "b" / "training_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1", "2"]


@pytest.mark.slow
def test_a_run_is_reproducible_from_its_seed(tmp_path, multiclass_data):
    histories = []
    for name in ("a", "b"):
        train("basenet", resolve("basenet", epochs=2, seed=5), data=multiclass_data, name=name, models_dir=tmp_path)
        histories.append(json.loads((tmp_path / name / "history.json").read_text()))
    assert histories[0]["loss"] == histories[1]["loss"]
    assert histories[0]["val_accuracy"] == histories[1]["val_accuracy"]


def test_evaluate_again_gives_the_same_figures(trained_models):
    before = read_manifest(trained_models["basenet"])["metrics"]
    after = reevaluate(trained_models["basenet"])["metrics"]
    assert after["test_accuracy"] == before["test_accuracy"]
    assert after["test_loss"] == pytest.approx(before["test_loss"], rel=1e-5)


def test_pipeline_skips_rungs_trained_and_exported_with_the_same_options(exported_models, models_dir, binary_data, capsys):
    from tests.conftest import SCRATCH_SIZE, TRANSFER_SIZE
    from training.pipeline import run_pipeline

    per_recipe = {"scratch": {"image_size": SCRATCH_SIZE, "epochs": 2}, "augmented": {"image_size": SCRATCH_SIZE, "epochs": 1},
                  "transfer": {"image_size": TRANSFER_SIZE, "epochs": 1, "base_weights": "none"},
                  "finetune": {"image_size": TRANSFER_SIZE, "epochs": 1}}
    manifests = run_pipeline(binary_data, models_dir=models_dir, per_recipe=per_recipe, export=False)
    assert [m["name"] for m in manifests] == ["scratch", "augmented", "transfer", "finetuned"]
    out = capsys.readouterr().out
    assert out.count("already trained with these options") == 4 and "test accuracy" in out and "export" not in out
    manifests = run_pipeline(binary_data, models_dir=models_dir, per_recipe=per_recipe)
    assert manifests == [exported_models[name] for name in ("scratch", "augmented", "transfer", "finetuned")]
    assert capsys.readouterr().out.count("already exported from this model.keras") == 4
    with pytest.raises(UserError, match="trained with other options; pass --overwrite"):
        run_pipeline(binary_data, models_dir=models_dir, per_recipe={**per_recipe, "scratch": {"image_size": SCRATCH_SIZE, "epochs": 3}})


def test_evaluate_on_data_of_other_classes_is_one_clear_error(trained_models, binary_data, multiclass_data, tmp_path):
    scratch = trained_models["scratch"]
    before = read_manifest(scratch)
    with pytest.raises(UserError, match=r"has classes \['circles', 'squares', 'triangles'\], but .*scratch was trained on "
                                        r"\['circles', 'squares'\]: evaluate it on data with the same class folders"):
        reevaluate(scratch, data=str(multiclass_data))
    renamed = tmp_path / "renamed"
    shutil.copytree(binary_data, renamed)
    for split in ("train", "validation", "test"):
        (renamed / split / "squares").rename(renamed / split / "boxes")
    with pytest.raises(UserError, match=r"has classes \['boxes', 'circles'\], but"):
        reevaluate(scratch, data=str(renamed))
    assert read_manifest(scratch) == before


def test_finetune_records_the_base_it_fine_tunes(trained_models, binary_data, tmp_path):
    from tests.conftest import TRANSFER_SIZE

    # Options of another base are not what the fine-tuned model is: it keeps the source's MobileNetV2 0.35.
    hp = resolve("finetune", image_size=TRANSFER_SIZE, epochs=1, unfreeze=4, base="vgg16", alpha=1.0)
    manifest = train("finetune", hp, data=binary_data, name="f", models_dir=tmp_path, source=trained_models["transfer"])
    assert manifest["base"]["architecture"] == manifest["hyperparameters"]["base"] == "mobilenet_v2"
    assert manifest["base"]["alpha"] == manifest["hyperparameters"]["alpha"] == 0.35


@pytest.mark.slow
def test_without_a_validation_split_every_image_trains_and_the_last_epoch_is_kept(tmp_path, multiclass_data):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(multiclass_data, data, ignore=shutil.ignore_patterns("validation"))
    with pytest.raises(UserError, match="--patience stops on the validation loss"):
        train("basenet", resolve("basenet", epochs=2, validation_split=0, patience=1), data=data, name="p", models_dir=tmp_path)
    manifest = train("basenet", resolve("basenet", epochs=2, validation_split=0), data=data, name="b", models_dir=tmp_path)
    assert manifest["dataset"]["sizes"] == {"train": 24, "validation": 0, "test": 12}
    assert manifest["dataset"]["validation_source"].startswith("none")
    assert manifest["training"]["best_epoch"] is None and manifest["training"]["epochs_run"] == 2
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert "val_loss" not in history and len(history["loss"]) == 2
    assert manifest["metrics"]["evaluated_on"] == "test"


def test_an_unknown_recipe_is_refused_before_its_folder_is_made(tmp_path):
    with pytest.raises(UserError, match="unknown recipe 'bogus'"):
        train("bogus", resolve("scratch"), data=None, name="b", models_dir=tmp_path)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_recipe_is_its_model_function_and_one_registry_entry(tmp_path, multiclass_data, monkeypatch):
    from training.registry import RECIPES, Recipe, convnet

    monkeypatch.setitem(RECIPES, "tiny", Recipe(convnet("build_basenet"), model_name="tiny",
                                                defaults={"image_size": (32, 32), "epochs": 1}))
    manifest = train("tiny", resolve("tiny"), data=multiclass_data, name="tiny", models_dir=tmp_path)
    assert manifest["recipe"] == "tiny" and manifest["training"]["epochs_run"] == 1 and manifest["base"] is None
    assert manifest["input"]["preprocessing"] == "inside the model: Rescaling(1/255)"


def test_a_run_record_is_compared_on_what_its_recipe_uses():
    run = run_record("scratch", resolve("scratch"), "/data", None)
    older = json.loads(json.dumps(run))
    del older["hyperparameters"]["lr_schedule"]  # recorded before the option existed: its default
    older["hyperparameters"]["unfreeze"] = 4  # fine-tuning's option: no concern of scratch
    assert _same_run(older, run)
    older["hyperparameters"]["epochs"] = 31
    assert not _same_run(older, run)
    finetune = run_record("finetune", resolve("finetune"), "/data", "/models/transfer")
    assert not _same_run({**finetune, "hyperparameters": {**finetune["hyperparameters"], "unfreeze": 4}}, finetune)
