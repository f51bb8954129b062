"""The inference side of a worker: every served model's ONNX Runtime session and its batching queues.

    Inference.infer(model, images)     -> rows of (probabilities, features)    POST /classify, /features
    Inference.explain(model, images)   -> rows of (probabilities, heatmaps)    POST /explain

`images` is [n, H, W, C] float32 0-255 (service/imaging.py made it); each call joins the model's
queue of that kind (service/batching.py), which runs batches through engine.Model in a thread.
A failure of the engine itself is a 503 `unavailable` with one log line, never a 500.
"""

from __future__ import annotations

import logging

import numpy as np

from . import engine, explain
from .batching import BatchQueue
from .errors import Reason, Rejection
from .registry import ModelPackage
from .settings import Settings, cpu_count

log = logging.getLogger("bentoml.image_classifier")


def concurrent_batches(config: Settings, provider: str) -> int:
    """Batches a queue runs at once: SERVICE_CONCURRENT_BATCHES, else on the CPU the share of this
    worker's cores at SERVICE_INFERENCE_THREADS each (Triton's instances), and on a GPU two, so that
    one batch's host work may overlap the other's kernels (not yet measured on a GPU)."""
    if config.concurrent_batches is not None:
        return config.concurrent_batches
    return 2 if provider == engine.CUDA else max(1, cpu_count() // (config.workers * config.inference_threads))


def explainable(package: ModelPackage) -> bool:
    """Whether the package has the Grad-CAM graph /explain needs (packages exported before it came have not)."""
    return explain.gradcam_file(package.manifest) is not None


class Inference:
    """ONNX Runtime sessions for every configured model, loaded and warmed, with a queue per model and kind."""

    def __init__(self, packages: dict[str, ModelPackage], config: Settings) -> None:
        self.engine = engine.Engine(packages, threads=config.inference_threads, require_gpu=config.require_gpu)
        # A batch not done in 90% of the request's time is given up on, so that its requests get a 503
        # `unavailable` with the service's JSON body before BentoML's own timeout answers a bare 504.
        limits = dict(max_batch_size=config.max_batch_size, max_latency_ms=config.max_latency_ms,
                      timeout_s=0.9 * config.timeout_s)
        models = self.engine.models
        self.concurrency = {name: concurrent_batches(config, model.provider) for name, model in models.items()}
        self._infer = {name: BatchQueue(name, self._outputs(model.run, "probabilities", "features"),
                                        concurrency=self.concurrency[name], **limits)
                       for name, model in models.items()}
        self._explain = {name: BatchQueue(name, self._outputs(model.explain, "probabilities", "heatmaps"),
                                          concurrency=self.concurrency[name], **limits)
                         for name, model in models.items() if explainable(packages[name])}
        for name, count in self.concurrency.items():
            log.info("model %s: up to %d batches at once, %d intra-op thread(s) each", name, count, config.inference_threads)

    @property
    def ready(self) -> bool:
        return self.engine.ready

    def providers(self) -> dict[str, str]:
        return self.engine.providers()

    async def infer(self, model: str, images: np.ndarray) -> np.ndarray:
        """Probabilities and features of each image, through the model's queue."""
        return await self._through(self._infer[model], images)

    async def explain(self, model: str, images: np.ndarray) -> np.ndarray:
        """Probabilities and every class's Grad-CAM heatmap of each image, through the model's explain queue."""
        return await self._through(self._explain[model], images)

    @staticmethod
    async def _through(queue: BatchQueue, images: np.ndarray) -> np.ndarray:
        try:
            return await queue.run(images)
        except Rejection:
            raise
        except Exception as err:  # ONNX Runtime failing on a batch: the server's failure, not the client's
            what = (str(err).splitlines() or [""])[0][:300] or "no message"
            log.error("inference of model %s failed: %s: %s", queue.model, type(err).__name__, what)
            raise Rejection(Reason.UNAVAILABLE, "the model could not be run now; retry later") from None

    @staticmethod
    def _outputs(run, first: str, second: str):
        def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
            a, b = run(images)
            return {first: a, second: b}

        return outputs
