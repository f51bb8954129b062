"""The Open Inference Protocol (KServe v2) on HTTP: service/v2.py's routes, beside the service's own.

  GET  /v2                                               server metadata (name, version, extensions)
  GET  /v2/health/live, /v2/health/ready                 200, or 400 when not ready (empty bodies)
  GET  /v2/models/{name}[/versions/{version}]            model metadata
  GET  /v2/models/{name}[/versions/{version}]/ready      200, or 400 when not ready
  POST /v2/models/{name}[/versions/{version}]/infer      inference

Versions are the BentoML store's versions of the model: the served one answers; another version in
the store is not ready (400, its metadata and infer refused with 400 `unknown_model`); a name or
version the store does not hold is 404 `unknown_model`.

An infer request takes the /classify path: the worker's pixel budget (Core.admit), `image_bytes`
files decoded by /classify's own decoding (Core.decode_all: the same threads, limits and
refusals), or the `image` tensor as it is; then the model's batching queue, shared with /classify
and /features (Core.infer). The routes reach the
serving core only through Core, whose fields service.py fills in.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field
from typing import AsyncContextManager, Awaitable, Callable, Mapping, Sequence

import anyio
import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from . import metrics, registry, v2
from .errors import Reason, Rejection
from .registry import ModelPackage
from .requests import Accepts
from .settings import Settings

# The endpoint label of imgcls_images_processed_total for images answered here.
ENDPOINT = "v2"
# An infer request whose JSON header is up to this size is parsed on the event loop.
_INLINE_JSON_BYTES = 1 << 16
# RequestGuard's check of infer bodies: tritonclient sends no Content-Type at all.
INFER_ROUTE = r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer"
INFER_BODY = Accepts((v2.JSON, v2.OCTET_STREAM, ""),
                     f"{v2.JSON}, or with binary tensor data after the JSON {v2.OCTET_STREAM} (or no Content-Type)")


def _server_version() -> str:
    try:
        return importlib.metadata.version("convnet-serving")
    except importlib.metadata.PackageNotFoundError:  # a bento: the service's files without the project
        return "unknown"


@dataclass(frozen=True)
class Core:
    """What the routes need of the serving core (each call looked up when a request comes)."""

    packages: Mapping[str, ModelPackage]
    settings: Settings
    # The request's hold on the worker's pixel budget, for an `async with` (a Rejection, 503, when it
    # does not fit): admit(package, files to decode, count of images sent as pixel tensors).
    admit: Callable[[ModelPackage, Sequence[bytes], int], AsyncContextManager]
    # The files decoded as /classify decodes them, in the same threads: float32 [N, H, W, C] 0-255;
    # a Rejection located at ("images", index) for a file it refuses.
    decode_all: Callable[[ModelPackage, Sequence[bytes]], Awaitable[np.ndarray]]
    # The model's outputs for a batch float32 [N, H, W, C] 0-255, through its batching queue:
    # out["probabilities"] [N, K], out["features"] [N, D]; a Rejection (503) when it cannot answer.
    infer: Callable[[ModelPackage, np.ndarray], Awaitable[Mapping[str, np.ndarray]]]
    # Whether every model can answer now (what /readyz says).
    ready: Callable[[], Awaitable[bool]]
    # The threads that decode images, shared with /classify.
    decode_limiter: Callable[[], anyio.CapacityLimiter]
    store_versions: Callable[[str], tuple[str, ...]] = registry.store_versions
    specs: dict[str, v2.ModelSpec] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "specs", {name: v2.ModelSpec.of(package) for name, package in self.packages.items()})

    def package(self, name: str, version: str) -> ModelPackage:
        """The served package of `name` at `version` ("": the served one), or the Rejection saying why not."""
        package = self.packages.get(name)
        if package is None:
            raise v2.ModelNotFound(f"unknown model {name!r}; served models: {', '.join(self.packages)}")
        if version in ("", package.version):
            return package
        if version in self.store_versions(name):
            raise Rejection(Reason.UNKNOWN_MODEL, f"model {name} version {version} is in the model store but not served "
                                                  f"(the served version is {package.version})")
        raise v2.ModelNotFound(f"model {name} has no version {version!r} in the model store "
                               f"(the served version is {package.version})")


def router(core: Core) -> APIRouter:
    api = APIRouter(tags=["Open Inference Protocol (KServe v2)"])
    version = _server_version()

    @api.get("/v2", summary="Server metadata")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(v2.server_metadata(version))

    @api.get("/v2/health/live", summary="200 while the server is up")
    async def live() -> Response:
        return Response(status_code=200)

    @api.get("/v2/health/ready", summary="200 when every model can answer, else 400")
    async def ready() -> Response:
        return Response(status_code=200 if await core.ready() else 400)

    async def model_metadata(request: Request, name: str, version: str) -> Response:
        try:
            core.package(name, version)
        except Rejection as rejection:
            return rejection.response()
        return JSONResponse(v2.model_metadata(core.specs[name]))

    async def model_ready(request: Request, name: str, version: str) -> Response:
        try:
            core.package(name, version)
        except v2.ModelNotFound as rejection:
            return rejection.response()
        except Rejection:  # in the store, not served: not ready
            return Response(status_code=400)
        return Response(status_code=200 if await core.ready() else 400)

    async def infer(request: Request, name: str, version: str) -> Response:
        try:
            package = core.package(name, version)
            spec = core.specs[name]
            body, headers = await request.body(), request.headers
            read = functools.partial(_read, body, headers.get("content-encoding", ""), headers.get(v2.HEADER_LENGTH), spec,
                                     core.settings)
            # A large JSON header (pixels as JSON numbers) takes milliseconds to parse: not on the event loop.
            json_bytes = headers.get(v2.HEADER_LENGTH, "")
            json_bytes = int(json_bytes) if json_bytes.isdigit() else len(body)
            parsed, wanted = read() if json_bytes <= _INLINE_JSON_BYTES else await anyio.to_thread.run_sync(
                read, limiter=core.decode_limiter())
            tensors = 0 if wanted.pixels is None else len(wanted.pixels)
            async with core.admit(package, wanted.files or (), tensors):
                batch = wanted.pixels if wanted.pixels is not None else await _decoded(core, package, wanted.files)
                outputs = await core.infer(package, batch)
        except Rejection as rejection:
            return rejection.response()
        probabilities = outputs[v2.PROBABILITIES]
        if any(output.name == v2.PROBABILITIES for output in wanted.outputs):
            for top in np.argmax(probabilities, axis=1):  # top-1 predictions, counted as /classify counts them
                metrics.PREDICTIONS.labels(model=package.name, label=package.classes[top]).inc()
        content, header_length = v2.response(spec, parsed.id, wanted.outputs,
                                             {v2.PROBABILITIES: probabilities, v2.FEATURES: outputs[v2.FEATURES]})
        if header_length is None:
            return Response(content, media_type=v2.JSON)
        return Response(content, media_type=v2.OCTET_STREAM, headers={v2.HEADER_LENGTH: str(header_length)})

    infer_body = {"requestBody": {"required": True, "content": {v2.JSON: {"schema": {"type": "object"}},
                                                                 v2.OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}}}
    for suffix, method, handler, summary, extra in [
        ("", "GET", model_metadata, "Model metadata: inputs and outputs", None),
        ("/ready", "GET", model_ready, "200 when the model can answer, else 400", None),
        ("/infer", "POST", infer, "Inference (JSON, or JSON and binary tensor data)", infer_body),
    ]:
        api.add_api_route("/v2/models/{name}" + suffix, _served_version(handler), methods=[method], summary=summary,
                          openapi_extra=extra)
        api.add_api_route("/v2/models/{name}/versions/{version}" + suffix, handler, methods=[method], summary=summary,
                          openapi_extra=extra)
    return api


def _served_version(handler: Callable[[Request, str, str], Awaitable[Response]]):
    """The route without /versions/{version}: the served version."""
    async def route(request: Request, name: str) -> Response:
        return await handler(request, name, "")

    return route


def _read(body: bytes, encoding: str, header_length: str | None, spec: v2.ModelSpec,
          settings: Settings) -> tuple[v2.InferRequest, v2.Images]:
    parsed = v2.parse_request(v2.decompress(body, encoding, settings.max_body_bytes), header_length)
    return parsed, v2.images(parsed, spec, max_images=settings.max_images_per_request)


async def _decoded(core: Core, package: ModelPackage, files: tuple[bytes, ...]) -> np.ndarray:
    """The files as /classify decodes them; a refusal located in this protocol's input."""
    try:
        return await core.decode_all(package, files)
    except Rejection as rejection:
        raise rejection.at(v2.IMAGE_BYTES, *rejection.loc[1:]) from None
