"""The command line: help, and one clear line (no traceback) for each mistake a user can make."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    # the commands' lines, not words anywhere ("python -m training" holds "train")
    listed = re.findall(r"^    (\S+)", result.stdout, re.MULTILINE)
    assert listed == ["train", "pipeline", "evaluate", "export", "reproduce", "visualize", "demo-data", "demo"]


def test_the_registry_drives_the_train_command(monkeypatch, capsys):
    from training.cli import build_parser
    from training.registry import RECIPES, Recipe, convnet

    # a recipe added to the table alone is a choice of `train`, named and described in its help
    monkeypatch.setitem(RECIPES, "tiny", Recipe(convnet("build_basenet"), model_name="tiny-net", pretrained=True))
    for name in RECIPES:
        assert build_parser().parse_args(["train", name]).recipe == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(RECIPES) + "}" in help_text
    assert " | ".join(RECIPES) in help_text
    assert "default: the recipe's: scratch, augmented, transfer, finetuned, mnist, basenet, tiny-net)" in help_text
    assert "pretrained base (transfer, finetune, tiny):" in help_text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_every_hyperparameter_but_augment_is_an_option_of_train():
    from dataclasses import fields

    from training.cli import _overrides, build_parser
    from training.config import Hyperparameters

    given = _overrides(build_parser().parse_args(["train", "scratch"]))
    assert set(given) == {field.name for field in fields(Hyperparameters)} - {"augment"}
    assert all(value is None for value in given.values())  # not given: the recipe's default


def test_pipeline_help_says_it_exports_each_rung():
    result = run_cli("pipeline", "--help")
    assert result.returncode == 0
    assert "exporting each after training" in " ".join(result.stdout.split())
    assert "--no-export" in result.stdout and "--no-register" in result.stdout


@pytest.mark.slow
def test_a_missing_data_folder_is_one_line_without_traceback(tmp_path):
    result = run_cli("train", "scratch", "--data", str(tmp_path / "nope"), "--models-dir", str(tmp_path / "m"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: data folder {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "finetune", "--from", "{tmp}/none"], "is not a trained model folder"),
        (["train", "transfer", "--data", "{data}", "--base-weights", "{tmp}/w.h5", "--image-size", "48"], "base weights file"),
        (["train", "transfer", "--data", "{data}", "--image-size", "48"], "pass --base-weights PATH"),
        (["train", "mnist", "--data", "{tmp}/missing.npz"], "MNIST file"),
        (["train", "mnist", "--data", "{mnist}", "--image-size", "32"], "the mnist recipe takes 28x28 grayscale"),
        (["train", "scratch", "--data", "{data}", "--image-size", "40"], "too small for the scratch recipe"),
        (["export"], "name a model folder"),
        (["export", "{tmp}"], "is not a trained model folder"),
        (["evaluate", "{tmp}"], "is not a trained model folder"),
        (["train", "scratch", "--data", "{data}", "--dropout", "1"], "--dropout 1 is not a fraction from 0 (none) to below 1"),
        (["pipeline", "--data", "{data}", "--dropout", "-0.5"], "--dropout -0.5 is not a fraction"),
        (["train", "scratch", "--data", "{data}", "--seed", "-1"], "--seed -1 is not between 0 and 4294967295"),
        (["train", "transfer", "--data", "{data}", "--base-weights", "{tmp}/text.weights.h5", "--image-size", "48"],
         "text.weights.h5 is not a weights file Keras can read"),
        (["train", "transfer", "--data", "{data}", "--base-weights", "{tmp}/text.keras", "--image-size", "48"],
         "text.keras is not a Keras model file Keras can read"),
        # the tiny models of every recipe (the session's trained_models): the full tier only
        pytest.param(["export", "{unsplit_model}", "--data", "{train_only}", "--no-register"], "has no test/ or validation/ folder",
                     marks=pytest.mark.slow),
    ],
)
def test_user_mistakes_are_one_error_line(tmp_path, capfd, offline, request, binary_data, mnist_npz, args, message):
    (tmp_path / "text.weights.h5").write_text("not an HDF5 file")
    (tmp_path / "text.keras").write_text("not a zip file")
    unsplit_model = train_only = None
    if "{unsplit_model}" in args:
        unsplit_model, train_only = _trained_without_validation_split(tmp_path, request.getfixturevalue("trained_models"))
    args = [a.format(tmp=tmp_path, data=binary_data, mnist=mnist_npz, unsplit_model=unsplit_model, train_only=train_only)
            for a in args]
    models = ["--models-dir", str(tmp_path / "m")] if args[0] in ("train", "pipeline") else []
    capfd.readouterr()  # what preparing the case wrote is not the command's
    assert main(args + models) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "cvd-bogus"], "unknown rungs ['cvd-bogus']"),
        (["--data", "{tmp}/nope"], "data folder"),
        (["--mnist", "{tmp}/missing.npz"], "MNIST file"),
        (["--base-weights", "{tmp}/text.weights.h5"], "text.weights.h5 is not a weights file Keras can read"),
        (["--only", "cvd-scratch,cvd-finetuned"], "fine-tuning starts from cvd-transfer-features"),
    ],
)
def test_reproduce_finds_a_wrong_input_before_training_anything(tmp_path, capfd, offline, binary_data, mnist_npz, args, message):
    # The ladder takes hours: the weights are used by its third rung and MNIST by its last, so a wrong
    # path must stop it before the first.
    (tmp_path / "text.weights.h5").write_text("not an HDF5 file")
    base = ["--data", str(binary_data), "--mnist", str(mnist_npz), "--base-weights", str(tmp_path / "missing.weights.h5")]
    args = base + [a.format(tmp=tmp_path) for a in args] + ["--models-dir", str(tmp_path / "m")]
    capfd.readouterr()
    assert main(["reproduce", *args]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "m").exists()


def _trained_without_validation_split(tmp_path, trained_models):
    """A model whose manifest says it trained with --validation-split 0 (the trained basenet's copy), and a
    copy of its data with only train/: no split to check an export's parity on."""
    model = tmp_path / "unsplit"
    shutil.copytree(trained_models["basenet"], model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["hyperparameters"]["validation_split"] = 0
    (model / "manifest.json").write_text(json.dumps(manifest))
    data = tmp_path / "train-only"
    shutil.copytree(Path(manifest["dataset"]["path"]) / "train", data / "train")
    return model, data


def test_bad_option_values_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "scratch", "--image-size", "big"])
    assert exit_info.value.code == 2
    assert "expected SIZE or HEIGHTxWIDTH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "scratch", "--name", "Bad Name"])


def test_demo_data_command(tmp_path):
    result = run_cli("demo-data", str(tmp_path / "demo"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "demo" / "train" / "circles").glob("*.jpg"))) == 100
