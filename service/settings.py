"""Every setting of the service, in one place: environment variables read once at import.

`python -m service.settings` prints them with their current values. BentoML's own settings
(BENTOML_HOME for the model store, BENTOML_PORT, ...) keep their BentoML names.

A bad value stops the service at start-up with one line naming the variable.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from .package import MODEL_NAME, MODEL_NAME_RULE

RECIPE_MODELS = ("scratch", "augmented", "transfer", "finetuned")
# A model name; an optional ':version' pins one version instead of the latest.
_MODEL_REF = re.compile(rf"^({MODEL_NAME})(?::([A-Za-z0-9._-]+))?$")
# An API key: printable ASCII without spaces or commas, long enough not to be guessed.
_API_KEY = re.compile(r"^[!-+\--~]{16,}$")
# A CORS origin as browsers send it: scheme://host[:port], no path; or * for any.
_ORIGIN = re.compile(r"^(\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)$")
# Settings whose values are secrets: `describe` does not print them.
SECRETS = ("SERVICE_API_KEYS",)


class SettingsError(ValueError):
    """A setting with a value the service cannot use; the message is one line."""


@dataclass(frozen=True)
class ModelRef:
    """One entry of SERVICE_MODELS: a model name in the store, optionally pinned to a version."""

    name: str
    version: str | None = None

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version or 'latest'}"


@dataclass(frozen=True)
class Settings:
    models: tuple[ModelRef, ...]
    default_model: str
    max_batch_size: int
    max_latency_ms: int
    max_images_per_request: int
    max_image_pixels: int
    max_body_bytes: int
    workers: int
    inference_threads: int
    require_gpu: bool
    jpeg_reduce: bool
    timeout_s: int
    shutdown_grace_s: int
    max_inflight_pixels: int = 160_000_000
    concurrent_batches: int | None = None  # None: chosen per model by its provider (inference.concurrent_batches)
    api_keys: tuple[str, ...] = ()
    metrics_require_key: bool = False
    cors_origins: tuple[str, ...] = ()

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(ref.name for ref in self.models)


def cpu_count(cgroup: str = "/sys/fs/cgroup") -> int:
    """Cores this process may use: the affinity mask (taskset, cpusets), or fewer where a CPU quota
    says so (a container's CPU limit, e.g. Kubernetes' `limits: cpu`, rounded up to whole cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cpu_quota(cgroup: str = "/sys/fs/cgroup") -> float | None:
    """The CFS CPU quota in cores (cgroup v2's cpu.max, else v1's cfs_quota_us over cfs_period_us),
    None where there is none."""
    def read(name: str) -> str:
        with open(os.path.join(cgroup, name)) as file:
            return file.read().strip()

    for quota_and_period in (lambda: read("cpu.max").split(),
                             lambda: (read("cpu/cpu.cfs_quota_us"), read("cpu/cpu.cfs_period_us"))):
        try:
            quota, period = quota_and_period()
            return None if quota in ("max", "-1") else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def gpu_present() -> bool:
    """Whether the NVIDIA driver shows a GPU to this process (no CUDA libraries needed to tell)."""
    return os.path.exists("/dev/nvidia0") or os.path.isdir("/proc/driver/nvidia/gpus")


def default_workers() -> int:
    """SERVICE_WORKERS when it is not set: one worker per core on the CPU (a worker's event loop, its
    decoding and its ONNX Runtime calls share one interpreter lock, which leaves cores idle), one on a
    GPU (its batches then gather every request; decoding threads still use every core)."""
    return 1 if gpu_present() else cpu_count()


# name -> (default, meaning). The README's table of settings is this one.
VARIABLES: dict[str, tuple[str, str]] = {
    "SERVICE_MODELS": (",".join(RECIPE_MODELS), "models to serve, comma-separated names in the BentoML store (name or name:version); "
                       "serving a built bento: the models it packs"),
    "SERVICE_DEFAULT_MODEL": ("finetuned", "model used when a request names none (the first of SERVICE_MODELS if this one is not served)"),
    "SERVICE_MAX_BATCH_SIZE": ("32", "most images in one batched inference call (adaptive batching, per model)"),
    "SERVICE_MAX_LATENCY_MS": ("2000", "longest a request may wait for a decoding thread, and then in the batching queue, before it is answered 503"),
    "SERVICE_MAX_IMAGES_PER_REQUEST": ("16", "most images in one request"),
    "SERVICE_MAX_IMAGE_PIXELS": ("40000000", "largest image accepted, in pixels (width x height), checked before decoding"),
    "SERVICE_MAX_BODY_BYTES": (str(32 << 20), "largest request body accepted, in bytes"),
    "SERVICE_WORKERS": ("", "worker processes; each parses, decodes, batches and runs its own ONNX Runtime sessions "
                            "(default: without a GPU, the cores this process may use, since one Python process "
                            "cannot keep them busy; with one, 1, so that all requests batch together on it)"),
    "SERVICE_INFERENCE_THREADS": ("1", "ONNX Runtime intra-op threads of each batch being run"),
    "SERVICE_CONCURRENT_BATCHES": ("", "batches each model's queue runs at once, each in a thread of its own on the model's one "
                                       "ONNX Runtime session, like Triton's instance count (default: on the CPU, the cores this "
                                       "process may use divided by SERVICE_WORKERS x SERVICE_INFERENCE_THREADS, "
                                       "at least 1; on a GPU, 2)"),
    "SERVICE_JPEG_REDUCE": ("0", "1: decode JPEGs at least 4x the model input at reduced scale: faster, but not as training did"),
    "SERVICE_TIMEOUT_S": ("60", "longest a request may take, end to end"),
    "SERVICE_SHUTDOWN_GRACE_S": ("25", "on SIGTERM, longest a worker goes on answering the requests it holds before it exits "
                                       "(below Kubernetes' default 30 s grace period)"),
    "REQUIRE_GPU": ("0", "1: refuse to start unless every model runs on CUDAExecutionProvider"),
    "SERVICE_MAX_INFLIGHT_PIXELS": ("160000000", "most pixels a worker holds for the requests it is answering (the pictures "
                                                 "being decoded, the inputs queued), at least SERVICE_MAX_IMAGE_PIXELS; "
                                                 "beyond it, 503 overloaded"),
    "SERVICE_API_KEYS": ("", "comma-separated API keys (16 or more printable characters each); when set, every request but "
                             "/livez, /healthz, /readyz (and /metrics) needs 'Authorization: Bearer <key>'; empty: open"),
    "SERVICE_METRICS_REQUIRE_KEY": ("0", "1: /metrics needs an API key too (SERVICE_API_KEYS must be set)"),
    "SERVICE_CORS_ORIGINS": ("", "comma-separated origins (https://host[:port], or *) whose web pages may call the "
                                 "service from a browser; empty: none (CORS off)"),
}


def _integer(minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise SettingsError(f"{name} must be an integer >= {minimum}, not {text!r}")
        return value

    return parse


def _optional(parse: Callable[[str, str], object], unset: Callable[[], object]) -> Callable[[str, str], object]:
    """`parse` for a variable that may be empty, `unset()` when it is (a default worked out at load time)."""
    return lambda name, text: parse(name, text) if text else unset()


def _flag(name: str, text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be 1 or 0, not {text!r}")


def _listed(pattern: re.Pattern, what: str) -> Callable[[str, str], tuple[str, ...]]:
    def parse(name: str, text: str) -> tuple[str, ...]:
        entries = tuple(entry.strip() for entry in text.split(",") if entry.strip())
        for entry in entries:
            if not pattern.match(entry):
                shown = "an entry" if name in SECRETS else repr(entry)  # never a key in a log
                raise SettingsError(f"{name}: {shown} is not {what}")
        return entries

    return parse


def _models(name: str, text: str) -> tuple[ModelRef, ...]:
    refs: list[ModelRef] = []
    for entry in (part.strip() for part in text.split(",")):
        match = _MODEL_REF.match(entry)
        if not match:
            raise SettingsError(
                f"{name}: {entry!r} is not a model name ({MODEL_NAME_RULE}; optionally :version)"
            )
        refs.append(ModelRef(match.group(1), match.group(2)))
    names = [ref.name for ref in refs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SettingsError(f"{name} names {', '.join(duplicates)} more than once")
    return tuple(refs)


def load(environ: Mapping[str, str] | None = None, *, default_models: tuple[str, ...] = RECIPE_MODELS) -> Settings:
    """Read every setting from `environ` (default: os.environ), or raise SettingsError.

    `default_models`: what SERVICE_MODELS means when it is not set."""
    environ = os.environ if environ is None else environ

    def get(name: str, parse: Callable[[str, str], object]):
        return parse(name, environ.get(name, VARIABLES[name][0]).strip())

    models = _models("SERVICE_MODELS", environ.get("SERVICE_MODELS", ",".join(default_models)).strip())
    names = [ref.name for ref in models]
    default_model = environ.get("SERVICE_DEFAULT_MODEL", "").strip()
    if default_model and default_model not in names:
        raise SettingsError(f"SERVICE_DEFAULT_MODEL {default_model!r} is not one of SERVICE_MODELS ({', '.join(names)})")
    if not default_model:
        default_model = VARIABLES["SERVICE_DEFAULT_MODEL"][0] if VARIABLES["SERVICE_DEFAULT_MODEL"][0] in names else names[0]
    config = Settings(
        models=models,
        default_model=default_model,
        # BentoML requires a batchable API's max_batch_size to be at least 2.
        max_batch_size=get("SERVICE_MAX_BATCH_SIZE", _integer(2)),
        max_latency_ms=get("SERVICE_MAX_LATENCY_MS", _integer(1)),
        max_images_per_request=get("SERVICE_MAX_IMAGES_PER_REQUEST", _integer(1)),
        max_image_pixels=get("SERVICE_MAX_IMAGE_PIXELS", _integer(1)),
        max_body_bytes=get("SERVICE_MAX_BODY_BYTES", _integer(1024)),
        workers=get("SERVICE_WORKERS", _optional(_integer(1), default_workers)),
        inference_threads=get("SERVICE_INFERENCE_THREADS", _integer(1)),
        concurrent_batches=get("SERVICE_CONCURRENT_BATCHES", _optional(_integer(1), lambda: None)),
        require_gpu=get("REQUIRE_GPU", _flag),
        jpeg_reduce=get("SERVICE_JPEG_REDUCE", _flag),
        timeout_s=get("SERVICE_TIMEOUT_S", _integer(1)),
        shutdown_grace_s=get("SERVICE_SHUTDOWN_GRACE_S", _integer(0)),
        max_inflight_pixels=get("SERVICE_MAX_INFLIGHT_PIXELS", _integer(1)),
        api_keys=get("SERVICE_API_KEYS", _listed(_API_KEY, "an API key (16 or more printable ASCII characters, "
                                                           "no spaces or commas)")),
        metrics_require_key=get("SERVICE_METRICS_REQUIRE_KEY", _flag),
        cors_origins=get("SERVICE_CORS_ORIGINS", _listed(_ORIGIN, "an origin (http[s]://host[:port], or *)")),
    )
    if config.max_inflight_pixels < config.max_image_pixels:
        raise SettingsError(f"SERVICE_MAX_INFLIGHT_PIXELS ({config.max_inflight_pixels}) is less than SERVICE_MAX_IMAGE_PIXELS "
                            f"({config.max_image_pixels}): the largest image allowed could never be admitted")
    if config.metrics_require_key and not config.api_keys:
        raise SettingsError("SERVICE_METRICS_REQUIRE_KEY=1 but SERVICE_API_KEYS is empty: no key could open /metrics")
    return config


def describe(environ: Mapping[str, str] | None = None) -> str:
    """The variables, what they mean, and the value each has in `environ`."""
    environ = os.environ if environ is None else environ
    lines = []
    for name, (default, meaning) in VARIABLES.items():
        value = environ.get(name)
        if value is not None and name in SECRETS:
            shown = f"{len([v for v in value.split(',') if v.strip()])} keys (set; not shown)"
        else:
            shown = f"{value!r} (set)" if value is not None else f"{default!r} (default)"
        lines.append(f"{name:32s} {shown}\n    {meaning}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
    try:
        load()
    except SettingsError as err:
        raise SystemExit(f"error: {err}") from None
