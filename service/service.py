"""The BentoML services: `bentoml serve service.service:ImageClassifier`.

A request, end to end:
  POST /classify (ImageClassifier, the public service)
    requests.RequestGuard       content type, body size
    requests.ClassifyInput      form fields, file count
    _preprocess                 imaging.picture_and_input per image, in a thread -> float32 [n, H, W, C]
    _infer                      Inference.infer_<model>: BentoML's adaptive batching gathers the
                                arrays of concurrent requests for that model into one batch,
                                engine.Model.run runs ONNX Runtime on it
    _classifications            probabilities -> labels and top-k (/features: _embeddings)
  -> JSON, one entry per image
POST /explain takes the same path with one image, through Inference.explain_<model> (model.onnx,
then gradcam.onnx on its feature map: every class's heatmap), and explain.overlay_png draws the
chosen class's heatmap over the picture.

Why two services: BentoML batches only calls that reach a batchable API over HTTP, so the
ONNX Runtime sessions live in their own service (one process) with one batchable API per model
and kind (infer, explain): each has its own batching queue, so one model's batch never waits
behind another's (the service has a thread per batchable API: BATCH_APIS). Decoding stays in the
public service, outside the batched call. A call the inference service sheds or cannot answer is
a 503 (`overloaded`, `unavailable`), never a 500.
"""

from __future__ import annotations

import base64
import gc
import logging
import re
import time
from pathlib import Path

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from . import engine, explain, imaging, metrics, registry, settings, ui
from .errors import Reason, Rejection
from .registry import ModelError, ModelPackage
from .requests import ClassifyInput, ExplainInput, FeaturesInput, ImagesInput, RequestGuard
from .responses import fix_media_types
from .settings import SettingsError

log = logging.getLogger("bentoml.image_classifier")


def _configure() -> tuple[settings.Settings, dict[str, ModelPackage]]:
    """Settings and checked model packages, or exit with one line saying what is wrong.

    This runs wherever the module is imported, first in `bentoml serve`'s own process: a bad
    setting or model stops the server before any worker starts."""
    try:
        config = settings.load(default_models=registry.bento_model_names() or settings.RECIPE_MODELS)
        packages = registry.open_packages(config.models)
        for package in packages.values():
            engine.check(package)
        if config.require_gpu and (problem := engine.cuda_problem()) is not None:
            raise ModelError(f"REQUIRE_GPU=1 but {problem}")
        return config, packages
    except (SettingsError, ModelError) as err:
        raise SystemExit(f"error: cannot start: {err}") from None


SETTINGS, PACKAGES = _configure()
# Where each model's feature-map positions lie on the image, for drawing its heatmaps.
CENTRES = {name: explain.centres(package.manifest) for name, package in PACKAGES.items()}
ImagesInput.max_images = SETTINGS.max_images_per_request


class _ExpectedRefusals(logging.Filter):
    """BentoML logs a traceback at ERROR level for each request whose fields fail validation and
    for each call its batcher sheds under overload. Those are refusals by design, answered 400 or
    503, shown in the access log and counted in imgcls_rejected_requests_total; the error log is
    for the server's own failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (ValidationError, ServiceUnavailable)))


logging.getLogger("bentoml._internal.server.http_app").addFilter(_ExpectedRefusals())


def _settle_garbage_collector() -> None:
    """Move everything start-up made (modules, ONNX Runtime sessions, BentoML's app) out of the
    garbage collector's sight: its full collections, which stall every request in the process,
    then walk only what requests create (docs/benchmarks.md: they took 80-150 ms each)."""
    gc.collect()
    gc.freeze()


def api_name(model: str, kind: str = "infer") -> str:
    """The inference service's API of a model (`infer_<model>`, `explain_<model>`): a Python name
    (model names may hold '-' and '.')."""
    return f"{kind}_" + re.sub(r"[^a-z0-9_]", "_", model)


def explainable(package: ModelPackage) -> bool:
    """Whether the package has the Grad-CAM graph /explain needs (packages exported before it came have not)."""
    return explain.gradcam_file(package.manifest) is not None


# --- the inference service: ONNX Runtime sessions and one batchable API per model -----------------


class _Inference:
    """ONNX Runtime sessions for every configured model, loaded and warmed before the service is ready."""

    def __init__(self) -> None:
        try:
            self.engine = engine.Engine(PACKAGES, threads=SETTINGS.inference_threads, require_gpu=SETTINGS.require_gpu)
        except ModelError as err:  # CUDA failing only now, in this process: it stays down, never ready
            log.error("cannot start: %s", err)
            raise SystemExit(1) from None
        _settle_garbage_collector()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.api
    async def providers(self) -> dict[str, str]:
        """The execution provider each model runs on (async: a dict read, no thread of the batches' budget)."""
        return self.engine.providers()


def _batch_api(model: str, kind: str, outputs: tuple[str, str]):
    """A batchable API of `model` answering `outputs`, the two arrays Model.run (kind "infer") or
    Model.explain (kind "explain") gives for a batch of images [N, H, W, C], float32 0-255."""
    def api(self, images: np.ndarray) -> np.ndarray:
        arrays = getattr(self.engine.models[model], "run" if kind == "infer" else kind)(images)
        # One array per image holding both outputs: BentoML splits the batch's result by rows.
        result = np.empty(len(images), dtype=[(name, np.float32, array.shape[1:]) for name, array in zip(outputs, arrays)])
        for name, array in zip(outputs, arrays):
            result[name] = array
        return result

    api.__name__ = api_name(model, kind)
    api.__doc__ = f"Model {model}: {' and '.join(outputs)} for a batch of images [N, H, W, C], float32 0-255."
    return bentoml.api(batchable=True, batch_dim=0, max_batch_size=SETTINGS.max_batch_size,
                       max_latency_ms=SETTINGS.max_latency_ms)(api)


for _name in PACKAGES:
    if hasattr(_Inference, api_name(_name)):
        raise SystemExit(f"error: cannot start: model names {_name!r} and another map to the same API {api_name(_name)}")
    setattr(_Inference, api_name(_name), _batch_api(_name, "infer", ("probabilities", "features")))
    if explainable(PACKAGES[_name]):
        setattr(_Inference, api_name(_name, "explain"), _batch_api(_name, "explain", ("probabilities", "heatmaps")))
    # Class-level model references (the versions found above): `bentoml build` packs them into the bento.
    setattr(_Inference, f"{api_name(_name)}_package", bentoml.models.BentoModel(f"{_name}:{PACKAGES[_name].version}"))

# BentoML runs every sync API call of a service, batched or not, in threads drawn from one
# anyio.CapacityLimiter of `threads` (_bentoml_impl/server/app.py, _to_thread), and each batchable
# API's dispatcher has at most one batch in flight (CorkDispatcher, a semaphore of 1). So a thread
# per batchable API (infer_<m>, and explain_<m> where the package can explain) lets every model's
# infer and explain batches run at once: no batch waits for a thread behind another model's or
# behind a slow Grad-CAM batch. `providers` is async and takes none.
BATCH_APIS = [api_name(name, kind) for name, package in PACKAGES.items() for kind in ("infer", "explain")
              if kind == "infer" or explainable(package)]

# Shorter than the request's timeout: a call the inference service does not answer in time (a
# batch stuck, the process restarting) fails in the public service, which answers 503
# `unavailable` and logs it, before the public service's own timeout would answer BentoML's bare 504.
# (BentoML's client to it waits this plus 1%.)
INFERENCE_TIMEOUT_S = 0.9 * SETTINGS.timeout_s

Inference = bentoml.service(
    name="inference",
    workers=1,
    threads=len(BATCH_APIS),
    traffic={"timeout": INFERENCE_TIMEOUT_S},
    # The public service's client to this one would otherwise replace its connection session every
    # 100 calls, closing it under calls still in flight (BentoML 1.4.30+, proxy2.SessionManager):
    # those fail with "Server disconnected". A local socket needs no rotation.
    runner_connection={"max_requests": 2**62, "max_age": 10.0**12},
    # Its callers are the public service's workers: their requests are logged and traced there.
    # An access log line and a tracing span for each internal call cost 10% of this process's
    # busy time (py-spy, docs/benchmarks.md); BentoML's metrics still count the calls.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": [f"/{api}" for api in BATCH_APIS]},
)(_Inference)


# --- the public service ----------------------------------------------------------------------------


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


# GET routes beside BentoML's POST APIs; BentoML merges their OpenAPI paths into its own.
http = FastAPI(title="models", docs_url=None, redoc_url=None, openapi_url=None)
ui.mount(http)  # GET /ui: the page for people (service/ui.py)


@bentoml.service(name="image_classifier", workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s})
@bentoml.asgi_app(http, path="/")
class ImageClassifier:
    """Image classification and feature extraction with the exported Keras models."""

    inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        # Decoding and resizing run in threads (Pillow, libjpeg and numpy release the GIL), one per core.
        self.decode_limiter = anyio.CapacityLimiter(settings.cpu_count())
        for reason in Reason:
            metrics.REJECTED.labels(reason=reason.value)
        for name, package in PACKAGES.items():
            for endpoint in ("classify", "features", "explain"):
                metrics.IMAGES.labels(model=name, endpoint=endpoint)
            for label in package.classes:
                metrics.PREDICTIONS.labels(model=name, label=label)
        _settle_garbage_collector()

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, images: list[Path], model: str, top_k: int) -> list[Classification]:
        """Classify each image: the most probable label, its probability and the `top_k` most probable labels."""
        try:
            package = self._package(model)
            if not 1 <= top_k <= len(package.classes):
                raise Rejection(Reason.TOP_K_OUT_OF_RANGE,
                                f"must be between 1 and {len(package.classes)} (the classes of model {package.name}), not {top_k}",
                                ("top_k",))
            outputs = await self._infer(package, await self._preprocess(package, images), "classify")
        except Rejection as rejection:
            return rejection.response()
        return self._classifications(package, outputs["probabilities"], top_k)

    @bentoml.api(route="/features", input_spec=FeaturesInput)
    async def features(self, images: list[Path], model: str, normalize: bool) -> list[Embedding]:
        """The model's feature vector (global average pooling of its last convolution block) for each image."""
        try:
            package = self._package(model)
            outputs = await self._infer(package, await self._preprocess(package, images), "features")
        except Rejection as rejection:
            return rejection.response()
        return self._embeddings(package, outputs["features"], normalize)

    @bentoml.api(route="/explain", input_spec=ExplainInput)
    async def explain(self, images: list[Path], model: str, label: str, format: str, ctx: bentoml.Context) -> Explanation:
        """Where in the image the evidence for a class lies (Grad-CAM): the class probabilities and the
        heatmap of the predicted class (or of `label`) over the image, as a base64 PNG or as image/png."""
        try:
            package = self._package(model)
            if len(images) != 1:
                raise Rejection(Reason.TOO_MANY_IMAGES, "explain takes one image per request", ("images",))
            if not explainable(package):
                raise Rejection(Reason.CANNOT_EXPLAIN, f"model {package.name}:{package.version} was exported without "
                                                       "gradcam.onnx; export it again to explain its answers", ("model",))
            if label and label not in package.classes:
                raise Rejection(Reason.UNKNOWN_LABEL, f"unknown label {label!r}; the classes of model {package.name}: "
                                                      f"{', '.join(package.classes)}", ("label",))
            picture, tensor = await anyio.to_thread.run_sync(self._decode, package, images[0], limiter=self.decode_limiter)
            row = (await self._infer(package, tensor[None], "explain", api_name(package.name, "explain")))[0]
        except Rejection as rejection:
            # With a context parameter, BentoML gives any returned response the context's status.
            ctx.response.status_code = rejection.status
            return rejection.response()
        top = int(np.argmax(row["probabilities"]))
        # A top-1 prediction as /classify counts them, whether it is sent (JSON) or only drawn (PNG).
        metrics.PREDICTIONS.labels(model=package.name, label=package.classes[top]).inc()
        explained = explain.class_index(package.classes, row["probabilities"], label)
        png = await anyio.to_thread.run_sync(explain.overlay_png, picture, row["heatmaps"][explained], CENTRES[package.name],
                                             limiter=self.decode_limiter)
        if format == "png" or (not format and "image/png" in ctx.request.headers.get("accept", "")):
            return Response(png, media_type="image/png")
        return Explanation(label=package.classes[top], probability=float(row["probabilities"][top]),
                           probabilities={c: float(p) for c, p in zip(package.classes, row["probabilities"])},
                           explained=package.classes[explained], heatmap_png=base64.b64encode(png).decode(),
                           model=package.name, version=package.version)

    @http.get("/models", response_model=ModelList, summary="The served models", tags=["Service APIs"])
    async def models(self) -> ModelList:
        """Every served model: version, classes, input size, recipe, test accuracy and execution provider."""
        try:
            providers = await self._call_inference("providers")
        except Rejection as rejection:
            return rejection.response()
        return ModelList(default_model=SETTINGS.default_model, models=[
            ModelSummary(**package.summary(), default=name == SETTINGS.default_model, provider=providers[name])
            for name, package in PACKAGES.items()
        ])

    # --- stages --------------------------------------------------------------------------------

    @staticmethod
    def _package(model: str) -> ModelPackage:
        name = model or SETTINGS.default_model
        if name not in PACKAGES:
            raise Rejection(Reason.UNKNOWN_MODEL, f"unknown model {name!r}; served models: {', '.join(PACKAGES)}", ("model",))
        return PACKAGES[name]

    async def _preprocess(self, package: ModelPackage, images: list[Path]) -> np.ndarray:
        """Decode, orient, convert and resize each file, in a thread: [n, H, W, C] float32 0-255."""
        return await anyio.to_thread.run_sync(self._decode_all, package, images, limiter=self.decode_limiter)

    async def _infer(self, package: ModelPackage, batch: np.ndarray, endpoint: str, api: str | None = None) -> np.ndarray:
        """The model's outputs for the batch, one row per image, through its batching queue (`api`:
        the inference service's API, by default the model's infer_<model>)."""
        outputs = await self._call_inference(api or api_name(package.name), batch, model=package.name)
        metrics.IMAGES.labels(model=package.name, endpoint=endpoint).inc(len(batch))
        return outputs

    async def _call_inference(self, api: str, *args, model: str | None = None):
        """The inference service's answer to `api(*args)`, or a 503 Rejection: `overloaded` when the
        model's batching queue sheds the call, `unavailable` when the service does not answer (its
        process restarting or stuck: a connection refused or dropped, a timeout; or its own error,
        whose traceback it logs). Those are logged here in one line, without a traceback."""
        try:
            return await getattr(self.inference.to_async, api)(*args)
        except ServiceUnavailable:
            raise Rejection(Reason.OVERLOADED, f"{f'model {model}' if model else 'the inference service'} has more requests "
                                               f"queued than it can answer within {SETTINGS.max_latency_ms} ms; retry later") from None
        except Exception as err:
            what = (str(err).splitlines() or [""])[0][:300] or (
                f"no answer within {INFERENCE_TIMEOUT_S:g} s" if isinstance(err, TimeoutError) else "no message")
            log.error("inference call %s failed: %s: %s", api, type(err).__name__, what)
            raise Rejection(Reason.UNAVAILABLE, "the inference service did not answer (restarting or failing); "
                                                "retry later") from None

    @classmethod
    def _decode_all(cls, package: ModelPackage, images: list[Path]) -> np.ndarray:
        return np.stack([cls._decode(package, path, index)[1] for index, path in enumerate(images)])

    @staticmethod
    def _decode(package: ModelPackage, image: Path, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The file images[index]: the picture as a person sees it (decoded, oriented) and the model's input tensor."""
        start = time.perf_counter()
        try:
            shown, tensor = imaging.picture_and_input(image.read_bytes(), package.input, max_pixels=SETTINGS.max_image_pixels,
                                                      jpeg_reduce=SETTINGS.jpeg_reduce)
        except Rejection as rejection:
            raise rejection.at("images", index) from None
        metrics.PREPROCESS_SECONDS.labels(model=package.name).observe(time.perf_counter() - start)
        return shown, tensor

    @staticmethod
    def _classifications(package: ModelPackage, probabilities: np.ndarray, top_k: int) -> list[Classification]:
        answers = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")[:top_k]
            ranked = [LabelProbability(label=package.classes[i], probability=float(row[i])) for i in order]
            metrics.PREDICTIONS.labels(model=package.name, label=ranked[0].label).inc()
            answers.append(Classification(label=ranked[0].label, probability=ranked[0].probability, top_k=ranked,
                                          model=package.name, version=package.version))
        return answers

    @staticmethod
    def _embeddings(package: ModelPackage, features: np.ndarray, normalize: bool) -> list[Embedding]:
        if normalize:
            features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return [Embedding(embedding=row.tolist(), dim=len(row), model=package.name, version=package.version) for row in features]


ImageClassifier.add_asgi_middleware(RequestGuard, routes=("/classify", "/features", "/explain"),
                                    max_body_bytes=SETTINGS.max_body_bytes)
fix_media_types(ImageClassifier, Inference)
