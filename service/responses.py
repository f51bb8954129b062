"""HTTP out: the answers' schemas, how model outputs become them, and their media types worked out once."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from . import metrics
from .registry import ModelPackage


class LabelProbability(BaseModel):
    label: str
    probability: float


class Classification(BaseModel):
    label: str
    probability: float
    top_k: list[LabelProbability]
    model: str
    version: str


class Embedding(BaseModel):
    embedding: list[float]
    dim: int
    model: str
    version: str


class Explanation(BaseModel):
    label: str
    probability: float
    probabilities: dict[str, float]
    explained: str
    heatmap_png: str
    model: str
    version: str


class ModelSummary(BaseModel):
    name: str
    version: str
    default: bool
    recipe: str | None
    classes: list[str]
    input: dict[str, int | str]
    test_accuracy: float | None
    evaluated_on: str | None
    created_at: str | None
    provider: str


class ModelList(BaseModel):
    default_model: str
    models: list[ModelSummary]


def classifications(package: ModelPackage, probabilities: np.ndarray, top_k: int) -> list[Classification]:
    """Each image's most probable label and its `top_k` labels (each top-1 counted in imgcls_predictions_total)."""
    answers = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:top_k]
        ranked = [LabelProbability(label=package.classes[i], probability=float(row[i])) for i in order]
        metrics.PREDICTIONS.labels(model=package.name, label=ranked[0].label).inc()
        answers.append(Classification(label=ranked[0].label, probability=ranked[0].probability, top_k=ranked,
                                      model=package.name, version=package.version))
    return answers


def embeddings(package: ModelPackage, features: np.ndarray, normalize: bool) -> list[Embedding]:
    """Each image's feature vector, scaled to unit L2 norm if asked."""
    if normalize:
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return [Embedding(embedding=row.tolist(), dim=len(row), model=package.name, version=package.version) for row in features]


def fix_media_types(*services) -> None:
    """Give every API of `services` (bentoml.service classes) its response media type up front.

    BentoML picks an API's response media type from the JSON schema of its output, which pydantic
    builds anew for every response, a large share of the worker's busy time at one client (py-spy,
    docs/benchmarks.md). The type never changes; BentoML uses the output spec's `media_type` when
    it is set, so it is set here to what BentoML would compute."""
    for service in services:
        for method in service.apis.values():
            method.output_spec.media_type = method.output_spec.mime_type()
