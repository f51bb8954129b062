"""What identifies a run, and the run's folder: its record, its per-epoch log, and resuming it.

A run's folder (models/<name>/) holds run.json, the options it trains with. Started again with the
same options, an interrupted run resumes from its backup; a finished one is not trained again
unless asked. Which options count is each recipe's (training/registry.py: a recipe's `options`).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from .config import Hyperparameters
from .errors import UserError
from .manifest import KERAS_FILE, MANIFEST, write_json
from .registry import RECIPES

LOG_FILE = "training_log.csv"
BACKUP_DIR = "backup"
CACHE_DIR = "cache"
HEAD_WEIGHTS = "head.weights.h5"
RUN_FILE = "run.json"


def read_log(out: Path) -> dict[str, list[float]]:
    """The per-epoch log as columns; a repeated epoch (interrupted write) keeps its last row."""
    path = out / LOG_FILE
    if not path.is_file():
        return {}
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    columns: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            # CSVLogger writes NA for the val_ columns of a run without validation
            if key != "epoch" and value not in ("", "NA", None):
                columns.setdefault(key, []).append(float(value))
    return columns


def run_record(recipe: str, hp: Hyperparameters, data, source) -> dict:
    """What identifies a run: a folder holding the same record holds the same training."""
    resolved = {key: str(Path(value).resolve()) if value else None for key, value in (("data", data), ("source", source))}
    return {"recipe": recipe, **resolved, "hyperparameters": hp.as_dict()}


def _uses(recipe: str, key: str) -> bool:
    """Whether `recipe` trains with the hyperparameter `key`: every recipe uses those that no
    recipe claims as its own option; the others, only the recipes that claim them."""
    claimed = any(key in entry.options for entry in RECIPES.values())
    return not claimed or (recipe in RECIPES and key in RECIPES[recipe].options)


def _same_run(previous: dict | None, run: dict) -> bool:
    """Whether a stored run record is `run`, on what the run's recipe uses. A hyperparameter the
    record lacks (added to the code after that run) counts as its default, how that run trained."""
    if previous is None or any(previous.get(k) != run[k] for k in ("recipe", "data", "source")):
        return False
    defaults, stored = Hyperparameters().as_dict(), previous.get("hyperparameters", {})
    return all(stored.get(key, defaults[key]) == value for key, value in run["hyperparameters"].items()
               if _uses(run["recipe"], key))


def _stored_run(out: Path) -> dict | None:
    """The run record kept in `out`, or None when there is none."""
    path = out / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def trained_with(out: Path, run: dict) -> bool:
    """True when `out` holds a finished run of `run`; a finished run of other options is an error."""
    if not (out / MANIFEST).is_file():
        return False
    previous = _stored_run(out)
    if not _same_run(previous, run):
        raise UserError(f"{out} holds a model trained with other options; pass --overwrite to train it again")
    return True


def prepare_output(out: Path, run: dict, overwrite: bool) -> bool:
    """Make `out` ready for this run; True when it resumes an interrupted run there."""
    if (out / MANIFEST).is_file():
        if not overwrite:
            raise UserError(f"{out} already holds a trained model; pass --overwrite to train it again")
        shutil.rmtree(out)
    elif (out / BACKUP_DIR).is_dir():
        previous = _stored_run(out)
        if _same_run(previous, run):
            return True
        if not overwrite:
            raise UserError(
                f"{out} holds an interrupted run with other options; give the same options to resume it, "
                "or pass --overwrite to start again"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (LOG_FILE, KERAS_FILE, HEAD_WEIGHTS):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    write_json(out / RUN_FILE, run)
    return False
