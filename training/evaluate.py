"""Test-set evaluation: accuracy, loss, per-class precision/recall/F1 and the confusion matrix,
written to a model folder's evaluation.json and confusion_matrix.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plots
from .errors import UserError
from .manifest import write_json


def as_class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """[N, K] class probabilities; a one-unit sigmoid output p becomes [1 - p, p]."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


def predict(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities [N, K] and true labels [N] over a batched (image, label) dataset."""
    probabilities, labels = [], []
    for images, batch_labels in dataset:
        probabilities.append(as_class_probabilities(model(images, training=False)))
        labels.append(np.asarray(batch_labels).reshape(-1))
    return np.concatenate(probabilities), np.concatenate(labels).astype(np.int64)


def report(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """The evaluation as a JSON-ready dict. The loss is the crossentropy Keras reports."""
    k = len(classes)
    predicted = probabilities.argmax(axis=1)
    p_true = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i, :].sum() if confusion[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(confusion[i, :].sum())}
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(p_true).mean()),
        "per_class": per_class,
        "classes": list(classes),
        # rows: true class, columns: predicted class
        "confusion_matrix": confusion.tolist(),
    }


def write_evaluation(model_dir: Path, core, ds, name: str) -> dict:
    """Evaluate on the test split (validation when there is none); write the JSON and the picture."""
    split, dataset = ("test", ds.test) if ds.test is not None else ("validation", ds.validation)
    if dataset is None:
        raise UserError("the data has no test split and the run no validation split: there is nothing to evaluate on")
    probabilities, labels = predict(core, dataset)
    result = {"evaluated_on": split, **report(probabilities, labels, ds.classes)}
    write_json(model_dir / "evaluation.json", result)
    plots.plot_confusion(result["confusion_matrix"], ds.classes, model_dir / "confusion_matrix.png",
                         f"{name}: {split} accuracy {result['accuracy']:.1%}")
    return result
