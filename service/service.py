"""The BentoML service: `bentoml serve service.service:ImageClassifier`.

A request, end to end, all in the worker that accepted it:
  POST /classify
    requests.RequestGuard        content type, body size (ASGI middleware, before the body is read)
    requests.ClassifyInput       form fields, file count; each file's bytes, in memory
    admit                        the worker's in-flight pixel budget (admission.py), or 503
    decode_all                   imaging.picture_and_input per image, in threads -> float32 [n, H, W, C]
    inference.Inference.infer    the model's batching queue (batching.BatchQueue: BentoML's adaptive
                                 batcher gathers the images of concurrent requests into one batch) ->
                                 engine.Model.run: ONNX Runtime, in a thread (a batch per core at once)
    responses.classifications    probabilities -> labels and top-k (/features: responses.embeddings)
  -> JSON, one entry per image
POST /explain takes the same path with one image, through Inference.explain (model.onnx, then
gradcam.onnx on its feature map: every class's heatmap, in the model's explain queue), and
explain.overlay_png draws the chosen class's heatmap over the picture.

Each worker (SERVICE_WORKERS) holds its own sessions and queues; decoding, batching and inference
never leave it, so no image crosses between processes. Refusals are 4xx with the JSON body of
errors.py; a full queue is 503 `overloaded`, an engine failure 503 `unavailable`.
"""

from __future__ import annotations

import base64
import gc
import logging
import threading
import time
from typing import Sequence

import anyio
import bentoml
import numpy as np
from bentoml._internal.context import server_context
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.responses import Response

from . import access, admission, engine, explain, imaging, memory, metrics, observe, registry, responses, settings, shutdown, ui, v2_routes
from .errors import Reason, Rejection, quoted
from .inference import Inference, explainable
from .registry import ModelError, ModelPackage
from .requests import IMAGE_FORM, ClientGone, RequestGuard, input_specs
from .responses import Classification, Embedding, Explanation, ModelList, ModelSummary
from .settings import SettingsError

log = logging.getLogger("bentoml.image_classifier")


def _configure() -> tuple[settings.Settings, dict[str, ModelPackage]]:
    """Settings and checked model packages, or exit with one line saying what is wrong.

    This runs wherever the module is imported, first in `bentoml serve`'s own process: a bad
    setting or model stops the server before any worker starts, with one line, never a worker
    restarting forever. ONNX Runtime loads every graph there (engine.check); the workers it then
    starts only read the packages."""
    try:
        config = settings.load(default_models=registry.bento_model_names() or settings.RECIPE_MODELS)
        packages = registry.open_packages(config.models)
        if server_context.worker_index is None:  # bentoml serve's own process (or a plain import), not a worker:
            for package in packages.values():    # the workers it starts load what it checked
                engine.check(package)
        if config.require_gpu and (problem := engine.cuda_problem()) is not None:
            raise ModelError(f"REQUIRE_GPU=1 but {problem}")
        return config, packages
    except (SettingsError, ModelError) as err:
        raise SystemExit(f"error: cannot start: {err}") from None


SETTINGS, PACKAGES = _configure()
# Where each model's feature-map positions lie on the image, for drawing its heatmaps.
CENTRES = {name: explain.centres(package.manifest) for name, package in PACKAGES.items()}
ClassifyInput, FeaturesInput, ExplainInput = input_specs(SETTINGS.max_images_per_request)


class _ExpectedRefusals(logging.Filter):
    """BentoML logs a traceback at ERROR level for each request whose fields fail validation. Those
    are refusals by design, answered 400, shown in the access log and counted in
    imgcls_rejected_requests_total; the error log is for the server's own failures. A client gone
    before its body arrived is logged in one line where it is found (requests.ClientGone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (ValidationError, ClientGone)))


logging.getLogger("bentoml._internal.server.http_app").addFilter(_ExpectedRefusals())


def _settle_garbage_collector() -> None:
    """Move everything start-up made (modules, ONNX Runtime sessions, BentoML's app) out of the
    garbage collector's sight: its full collections, which stall every request in the process,
    then walk only what requests create (docs/benchmarks.md measured the stalls)."""
    gc.collect()
    gc.freeze()


# GET routes beside BentoML's POST APIs; BentoML merges their OpenAPI paths into its own.
http = FastAPI(title="models", docs_url=None, redoc_url=None, openapi_url=None)
# The Open Inference Protocol (KServe v2, service/v2_routes.py) on the same models and batching queues.
# Its only calls into the core: the pixel budget, decoding, the batching queue, readiness and the
# decoding threads (for its JSON).
http.include_router(v2_routes.router(v2_routes.Core(
    PACKAGES, SETTINGS,
    admit=lambda package, files, tensors: bentoml.get_current_service().admit(package, files, tensors),
    decode_all=lambda package, files: bentoml.get_current_service().decode_all(package, files),
    infer=lambda package, batch: bentoml.get_current_service().infer_batch(package, batch, v2_routes.ENDPOINT),
    ready=lambda: bentoml.get_current_service().__is_ready__(),
    decode_limiter=lambda: bentoml.get_current_service().decode_limiter,
)))
ui.mount(http)  # GET /ui: the page for people (service/ui.py)


@bentoml.service(name="image_classifier", workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s})
@bentoml.asgi_app(http, path="/")
class ImageClassifier:
    """Image classification and feature extraction with the exported Keras models."""

    def __init__(self) -> None:
        # The models load in a thread, so that the worker answers meanwhile: /livez 200, /readyz 503,
        # and requests 503 `unavailable` with Retry-After, until every model is loaded and warmed.
        self._inference: Inference | None = None
        threading.Thread(target=self._load_models, name="load-models", daemon=True).start()
        shutdown.drain_within(SETTINGS.shutdown_grace_s)
        # Decoding and resizing run in threads (Pillow, libjpeg and numpy release the GIL), one per core.
        self.decode_limiter = anyio.CapacityLimiter(settings.cpu_count())
        self.decode_queue = DECODE_QUEUE
        metrics.MAX_LATENCY_SECONDS.set(SETTINGS.max_latency_ms / 1000)
        self.budget = admission.Budget(SETTINGS.max_inflight_pixels)
        for reason in Reason:
            metrics.REJECTED.labels(reason=reason.value)
        for name, package in PACKAGES.items():
            for endpoint in ("classify", "features", "explain", v2_routes.ENDPOINT):
                metrics.IMAGES.labels(model=name, endpoint=endpoint)
            for label in package.classes:
                metrics.PREDICTIONS.labels(model=name, label=label)
            metrics.IN_FLIGHT.labels(model=name)

    def _load_models(self) -> None:
        try:
            self._inference = Inference(PACKAGES, SETTINGS)
        except ModelError as err:  # CUDA failing only now, in this worker: it stays up, never ready
            log.error("cannot start: %s", err)
            return
        _settle_garbage_collector()

    async def __is_ready__(self) -> bool:
        return self._inference is not None

    @property
    def inference(self) -> Inference:
        if self._inference is None:
            raise Rejection(Reason.UNAVAILABLE, "the models are still loading; retry later")
        return self._inference

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, images: list[bytes], model: str, top_k: int) -> list[Classification]:
        """Classify each image: the most probable label, its probability and the `top_k` most probable labels."""
        try:
            package = self._package(model)
            if not 1 <= top_k <= len(package.classes):
                raise Rejection(Reason.TOP_K_OUT_OF_RANGE,
                                f"must be between 1 and {len(package.classes)} (the classes of model {package.name}), not {top_k}",
                                ("top_k",))
            async with self.admit(package, images):
                rows = await self.infer_batch(package, await self.decode_all(package, images), "classify")
        except Rejection as rejection:
            return rejection.response()
        return responses.classifications(package, rows["probabilities"], top_k)

    @bentoml.api(route="/features", input_spec=FeaturesInput)
    async def features(self, images: list[bytes], model: str, normalize: bool) -> list[Embedding]:
        """The model's feature vector (global average pooling of its last convolution block) for each image."""
        try:
            package = self._package(model)
            async with self.admit(package, images):
                rows = await self.infer_batch(package, await self.decode_all(package, images), "features")
        except Rejection as rejection:
            return rejection.response()
        return responses.embeddings(package, rows["features"], normalize)

    @bentoml.api(route="/explain", input_spec=ExplainInput)
    async def explain(self, images: list[bytes], model: str, label: str, format: str, ctx: bentoml.Context) -> Explanation:
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
                raise Rejection(Reason.UNKNOWN_LABEL, f"unknown label {quoted(label)}; the classes of model {package.name}: "
                                                      f"{', '.join(package.classes)}", ("label",))
            async with self.admit(package, images):
                with self.decode_queue.enter(1) as ticket:
                    picture, tensor = await anyio.to_thread.run_sync(self._decode, package, images[0], 0, ticket,
                                                                     limiter=self.decode_limiter)
                row = (await self.inference.explain(package.name, tensor[None]))[0]
        except Rejection as rejection:
            # With a context parameter, BentoML gives any returned response the context's status.
            ctx.response.status_code = rejection.status
            return rejection.response()
        metrics.IMAGES.labels(model=package.name, endpoint="explain").inc()
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
            providers = self.inference.providers()
        except Rejection as rejection:
            return rejection.response()
        return ModelList(default_model=SETTINGS.default_model, models=[
            ModelSummary(**package.summary(), default=name == SETTINGS.default_model, provider=providers[name])
            for name, package in PACKAGES.items()
        ])

    # --- stages --------------------------------------------------------------------------------

    async def infer_batch(self, package: ModelPackage, images: np.ndarray, endpoint: str) -> np.ndarray:
        """Probabilities and features of `images` through the model's batching queue, counted for `endpoint`."""
        rows = await self.inference.infer(package.name, images)
        metrics.IMAGES.labels(model=package.name, endpoint=endpoint).inc(len(rows))
        return rows

    @staticmethod
    def _package(model: str) -> ModelPackage:
        name = model or SETTINGS.default_model
        if name not in PACKAGES:
            raise Rejection(Reason.UNKNOWN_MODEL, f"unknown model {quoted(name)}; served models: {', '.join(PACKAGES)}", ("model",))
        return PACKAGES[name]

    def admit(self, package: ModelPackage, images: Sequence[bytes], tensors: int = 0):
        """The request's hold on the worker's pixel budget (admission.py), for an `async with`
        around its decoding and inference: 503 `overloaded` when it does not fit. `tensors`:
        images sent as model inputs (v2's pixel tensors), besides the files to decode."""
        sizes = [imaging.image_pixels(image) for image in images]  # headers only
        return self.budget.admit(admission.cost(sizes, package.input.height * package.input.width,
                                                at_once=int(self.decode_limiter.total_tokens), tensors=tensors))

    async def decode_all(self, package: ModelPackage, images: Sequence[bytes]) -> np.ndarray:
        """Decode, orient, convert and resize each file, each in a thread of its own (as many at once
        as the decode limiter allows, so that one request's files use every core): [n, H, W, C]
        float32 0-255. Every file is tried; a refusal names the first bad one, as one thread would."""
        def decode(index: int) -> np.ndarray | Rejection:
            try:
                return self._decode(package, images[index], index, ticket)[1]
            except Rejection as rejection:
                return rejection

        outcomes: list[np.ndarray | Rejection | None] = [None] * len(images)

        async def into_place(index: int) -> None:
            outcomes[index] = await anyio.to_thread.run_sync(decode, index, limiter=self.decode_limiter)

        with self.decode_queue.enter(len(images)) as ticket:
            async with anyio.create_task_group() as group:
                for index in range(len(images)):
                    group.start_soon(into_place, index)
        for outcome in outcomes:
            if isinstance(outcome, Rejection):
                raise outcome
        return np.stack(outcomes)

    @staticmethod
    def _decode(package: ModelPackage, data: bytes, index: int, ticket: admission.Ticket) -> tuple[np.ndarray, np.ndarray]:
        """The file images[index], in a decoding thread, its turn in the decode queue come (`ticket`):
        the picture as a person sees it (decoded, oriented) and the model's input tensor."""
        ticket.start()
        start = time.perf_counter()
        try:
            shown, tensor = imaging.picture_and_input(data, package.input, max_pixels=SETTINGS.max_image_pixels,
                                                      jpeg_reduce=SETTINGS.jpeg_reduce)
        except Rejection as rejection:
            raise rejection.at("images", index) from None
        seconds = time.perf_counter() - start
        ticket.decoded(seconds)
        metrics.PREPROCESS_SECONDS.labels(model=package.name).observe(seconds)
        return shown, tensor


# Large blocks go back to the system when freed (service/memory.py): memory flat under steady load.
memory.give_back_large_blocks()

# The images waiting for this worker's decoding threads (one queue per worker process, like the
# threads): refused at arrival beyond SERVICE_MAX_LATENCY_MS of waiting, by RequestGuard before
# their body is parsed while it is already that long.
DECODE_QUEUE = admission.DecodeQueue(settings.cpu_count(), SETTINGS.max_latency_ms / 1000)

# The models this service serves, as found above: `bentoml build` packs them into the bento.
ImageClassifier.models.extend(bentoml.models.BentoModel(f"{name}:{package.version}") for name, package in PACKAGES.items())
# First, so that it is outside RequestGuard and times (and counts) its refusals too.
ImageClassifier.add_asgi_middleware(observe.RequestDuration)
ImageClassifier.add_asgi_middleware(RequestGuard, routes={**dict.fromkeys(("/classify", "/features", "/explain"), IMAGE_FORM),
                                                          v2_routes.INFER_ROUTE: v2_routes.INFER_BODY},
                                    max_body_bytes=SETTINGS.max_body_bytes, shed=DECODE_QUEUE.overloaded)
responses.fix_media_types(ImageClassifier)
# Routing refusals (404/405 JSON, bounded metric labels), API keys and CORS before BentoML's middlewares.
access.install(ImageClassifier, api_keys=SETTINGS.api_keys, metrics_require_key=SETTINGS.metrics_require_key,
               cors_origins=SETTINGS.cors_origins)
