"""ONNX Runtime sessions: the inference stage of each worker, one session per model.

Provider choice: CUDAExecutionProvider when this ONNX Runtime build has it and a session on it
really works (a warm-up inference succeeds), else CPUExecutionProvider. ONNX Runtime falls back
to the CPU silently and logs red errors while trying CUDA on a machine without one, so the attempt
runs with its logger muted and the provider actually active is read back from the session and
logged: one line per model. REQUIRE_GPU=1 turns a CPU fallback into a start-up failure.

`check` runs when the service module is imported, in `bentoml serve`'s own process before any
worker starts: a model ONNX Runtime refuses, or whose outputs break the contract, stops the
server there with one line (a worker failing later would only leave it up and never ready).

Threads: SERVICE_INFERENCE_THREADS intra-op threads per run (default 1: the batching queue runs one
batch per core at once instead, service/batching.py), one inter-op thread, and no spin-waiting: the
workers' decoding threads run on the same cores, and a spinning ONNX Runtime pool would steal their
time between batches. A session is shared by the concurrent runs (ONNX Runtime's Run is thread-safe).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time

import numpy as np
import onnxruntime as ort

from . import explain, metrics
from .registry import ModelError, ModelPackage
from .settings import gpu_present

log = logging.getLogger("bentoml.image_classifier")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OUTPUTS = ("probabilities", "features")
_ORT_DEFAULT_SEVERITY = 2  # warnings and above
_ORT_QUIET = 4  # fatal only


def cuda_problem() -> str | None:
    """Why CUDAExecutionProvider cannot work here, or None if it may: checked without creating a
    CUDA context, by loading the provider's library (and so the CUDA and cuDNN libraries it needs)."""
    if CUDA not in ort.get_available_providers():
        return f"this ONNX Runtime build ({ort.__version__}) has no CUDAExecutionProvider"
    if not gpu_present():
        return "no NVIDIA GPU is visible to this process"
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    try:
        ctypes.CDLL(os.path.join(capi, "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.path.join(capi, "libonnxruntime_providers_cuda.so"))
    except OSError as err:
        return f"the CUDA provider cannot load its libraries ({err}); it needs CUDA 13 and cuDNN 9"
    return None


def check(package: ModelPackage) -> None:
    """Raise ModelError unless ONNX Runtime loads every graph of the package on the CPU (model.onnx
    and, for /explain, gradcam.onnx) and the model's outputs fit the manifest."""
    _warm_up(package, _load(package, package.onnx_path))
    gradcam = explain.gradcam_file(package.manifest)
    if gradcam is not None:
        session = _load(package, package.path / gradcam)
        inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if inputs != [explain.GRADCAM_INPUT] or explain.GRADCAM_OUTPUT not in outputs:
            raise ModelError(f"model {package.name}:{package.version}: {gradcam} must take {explain.GRADCAM_INPUT} and give "
                             f"{explain.GRADCAM_OUTPUT}; it takes {inputs} and gives {outputs}")


def _load(package: ModelPackage, path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), _session_options(1), providers=[CPU])
    except Exception as err:  # ONNX Runtime refusing the file: not ONNX, truncated, bad graph
        raise ModelError(f"model {package.name}:{package.version}: ONNX Runtime cannot load "
                         f"{path}: {(str(err).splitlines() or ['no message'])[0]}") from None


def _warm_up(package: ModelPackage, session: ort.InferenceSession) -> None:
    """One inference on a blank image; the outputs must be what the manifest promises."""
    spec, name = package.input, f"model {package.name}:{package.version}"
    inputs, outputs = session.get_inputs(), {o.name for o in session.get_outputs()}
    if len(inputs) != 1 or not set(OUTPUTS) <= outputs:
        raise ModelError(f"{name}: the ONNX graph must take one input and give {', '.join(OUTPUTS)}; "
                         f"it takes {[i.name for i in inputs]} and gives {sorted(outputs)}")
    blank = np.zeros((1, spec.height, spec.width, spec.channels), np.float32)
    try:
        probabilities, features = session.run(list(OUTPUTS), {inputs[0].name: blank})
    except Exception as err:  # e.g. the graph wants another input size than the manifest says
        raise ModelError(f"{name}: inference on a {spec.height}x{spec.width}x{spec.channels} image fails: "
                         f"{str(err).splitlines()[0]}") from None
    if probabilities.shape != (1, len(package.classes)) or features.ndim != 2 or features.shape[0] != 1:
        raise ModelError(f"{name}: ONNX outputs have shapes {probabilities.shape} and {features.shape}; "
                         f"expected (1, {len(package.classes)}) and (1, D)")


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _open_session(package: ModelPackage, threads: int, provider: str) -> ort.InferenceSession:
    if provider == CUDA:
        # Batch sizes vary with the load; an exhaustive cuDNN search would run again for each new one.
        providers = [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
        ort.set_default_logger_severity(_ORT_QUIET)
        try:
            return ort.InferenceSession(str(package.onnx_path), _session_options(threads), providers=providers)
        finally:
            ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    return ort.InferenceSession(str(package.onnx_path), _session_options(threads), providers=[CPU])


class Model:
    """One model's session, checked against its manifest and warmed up."""

    def __init__(self, package: ModelPackage, threads: int, require_gpu: bool) -> None:
        self.package = package
        self.name = package.name
        self.session, self.provider = self._start(threads, require_gpu)
        self.input_name = self.session.get_inputs()[0].name
        # Grad-CAM weights (POST /explain) come from a graph of their own, run only when asked.
        gradcam = explain.gradcam_file(package.manifest)
        self.gradcam_session = None if gradcam is None else ort.InferenceSession(
            str(package.path / gradcam), _session_options(threads), providers=self.session.get_providers())
        log.info(
            "model %s:%s (%s) on %s, %d intra-op threads, input %dx%dx%d, %d classes",
            package.name, package.version, package.onnx_path.name, self.provider, threads,
            package.input.height, package.input.width, package.input.channels, len(package.classes),
        )

    def _start(self, threads: int, require_gpu: bool) -> tuple[ort.InferenceSession, str]:
        name = f"model {self.package.name}:{self.package.version}"
        problem = cuda_problem()
        if problem is None:
            try:
                session = _open_session(self.package, threads, CUDA)
                if session.get_providers()[0] == CUDA:
                    _warm_up(self.package, session)
                    return session, CUDA
                problem = "ONNX Runtime could not create a CUDA session"
            except Exception as err:  # CUDA initialised but cannot run this model
                problem = f"the CUDA session failed: {str(err).splitlines()[0]}"
        if require_gpu:
            raise ModelError(f"{name}: REQUIRE_GPU=1 but CUDAExecutionProvider is not active: {problem}")
        if gpu_present():  # a GPU left unused deserves a warning; a machine without one does not
            log.warning("%s: not using the GPU: %s", name, problem)
        session = _open_session(self.package, threads, CPU)
        _warm_up(self.package, session)
        return session, CPU

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N, classes] and features [N, D] for a batch [N, H, W, C] of float32 0-255."""
        start = time.perf_counter()
        probabilities, features = self.session.run(list(OUTPUTS), {self.input_name: images})
        self._record(start, len(images))
        return probabilities, features

    def explain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N, classes] and every class's Grad-CAM heatmap [N, classes, h, w] in [0, 1]."""
        start = time.perf_counter()
        result = explain.infer(self.session, self.gradcam_session, self.input_name, images)
        self._record(start, len(images))
        return result

    def _record(self, start: float, images: int) -> None:
        metrics.INFERENCE_SECONDS.labels(model=self.name).observe(time.perf_counter() - start)
        metrics.BATCH_IMAGES.labels(model=self.name).observe(images)


class Engine:
    """Every served model, loaded and warmed; ready once all are."""

    def __init__(self, packages: dict[str, ModelPackage], *, threads: int, require_gpu: bool) -> None:
        self.ready = False
        self.models: dict[str, Model] = {}
        for name, package in packages.items():
            self.models[name] = Model(package, threads, require_gpu)
            metrics.MODEL_INFO.labels(model=name, version=package.version, provider=self.models[name].provider).set(1)
        self.ready = True

    def providers(self) -> dict[str, str]:
        return {name: model.provider for name, model in self.models.items()}
