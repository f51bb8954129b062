"""Test helpers for the service: hand-built ONNX models that honour the package contract, a model
store to put them in, image files to send a real `bentoml serve` (loadtests/servers.py runs it;
the benchmark uses the same code), and the table of bad requests every image endpoint refuses.

The hand-built models (onnx.helper, no TensorFlow) let the service tests run before and besides
the real trained models: features = the mean of each channel over the image (ReduceMean over
H and W of the 0-255 input scaled to 0-1), probabilities = Softmax(features @ W + b).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from loadtests.images import encode, photo_like
from loadtests.servers import REPO, Server, adaptive_batches, serve_env


# --- hand-built models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModel:
    name: str
    height: int
    width: int
    channels: int
    classes: tuple[str, ...]

    @property
    def color_mode(self) -> str:
        return "rgb" if self.channels == 3 else "grayscale"

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """W [C, K] and b [K]: fixed, different per class, so that colours decide the label."""
        k = len(self.classes)
        w = np.array([[np.cos(2.5 * (c + 1) * (j + 1)) * 6 for j in range(k)] for c in range(self.channels)], np.float32)
        b = np.linspace(-0.5, 0.5, k, dtype=np.float32)
        return w, b

    def onnx_bytes(self) -> bytes:
        import onnx
        from onnx import TensorProto, helper

        w, b = self.weights()
        graph = helper.make_graph(
            [
                helper.make_node("Mul", ["image", "scale"], ["scaled"]),
                helper.make_node("ReduceMean", ["scaled"], ["features"], axes=[1, 2], keepdims=0),
                helper.make_node("MatMul", ["features", "W"], ["logits_raw"]),
                helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            ],
            f"tiny_{self.name}",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, self.height, self.width, self.channels])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(self.classes)]),
             helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, self.channels])],
            initializer=[
                helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255]),
                helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.flatten().tolist()),
                helper.make_tensor("b", TensorProto.FLOAT, list(b.shape), b.tolist()),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model.SerializeToString()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the graph computes, in numpy: (probabilities, features) for float32 [N, H, W, C] 0-255."""
        w, b = self.weights()
        features = (images / 255).mean(axis=(1, 2))
        logits = features @ w + b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), features

    def manifest(self, onnx: bytes) -> dict:
        return {
            "format_version": 1,
            "name": self.name,
            "recipe": "tiny-test",
            "created_at": "2026-01-01T00:00:00+00:00",
            "classes": list(self.classes),
            "input": {"name": "image", "height": self.height, "width": self.width, "channels": self.channels,
                      "color_mode": self.color_mode, "dtype": "float32", "layout": "NHWC", "value_range": [0, 255],
                      "resize": "bilinear", "exif_orientation": True, "preprocessing": "inside the model: x / 255"},
            "outputs": {"probabilities": {"shape": [None, len(self.classes)]}, "features": {"shape": [None, self.channels]}},
            "metrics": {"test_accuracy": 0.5, "test_loss": 0.7, "evaluated_on": "test"},
            "export": {"onnx": {"path": "model.onnx", "opset": 17}},
            "files": {"model.onnx": {"sha256": hashlib.sha256(onnx).hexdigest(), "bytes": len(onnx)}},
        }


def gradcam_stub_onnx(channels: int = 3) -> bytes:
    """A graph with gradcam.onnx's input and output names (feature_map -> gradcam_weights), as the
    service loads it; it computes nothing Grad-CAM would."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["feature_map"], ["gradcam_weights"], axes=[1], keepdims=0)], "gradcam_stub",
        [helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, [None, 1, 1, channels])],
        [helper.make_tensor_value_info("gradcam_weights", TensorProto.FLOAT, [None, 1, channels])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def with_gradcam(manifest: dict, gradcam: bytes | None = None) -> dict:
    """`manifest` naming a gradcam.onnx (and, given its bytes, recording its sha256 and size)."""
    manifest = json.loads(json.dumps(manifest))
    manifest["export"]["outputs"] = {**manifest["outputs"], "feature_map": {"shape": [None, 1, 1, 3]}}
    manifest["export"]["gradcam"] = {"onnx": {"path": "gradcam.onnx", "input": "feature_map", "output": "gradcam_weights"}}
    if gradcam is not None:
        manifest["files"]["gradcam.onnx"] = {"sha256": hashlib.sha256(gradcam).hexdigest(), "bytes": len(gradcam)}
    return manifest


RGB_MODEL = TinyModel("tiny-rgb", 24, 32, 3, ("red", "green", "blue"))
GRAY_MODEL = TinyModel("tiny-gray", 28, 28, 1, ("dark", "light"))


def register(model: TinyModel, bentoml_home: Path, *, onnx: bytes | None = None, manifest: dict | None = None) -> str:
    """Put `model` into the model store under `bentoml_home` the way training/export.py does; its tag."""
    import bentoml
    from bentoml._internal.models import ModelStore

    onnx = model.onnx_bytes() if onnx is None else onnx
    manifest = model.manifest(onnx) if manifest is None else manifest
    store = ModelStore(bentoml_home / "models")
    # BentoML metadata cannot hold None (the manifest does); the service reads manifest.json anyway.
    metadata = {"recipe": manifest.get("recipe", ""), "classes": list(manifest.get("classes", []))}
    with bentoml.models.create(model.name, metadata=metadata, labels={"recipe": "tiny-test"}, _model_store=store) as stored:
        Path(stored.path, "model.onnx").write_bytes(onnx)
        Path(stored.path, "manifest.json").write_text(json.dumps(manifest, indent=2))
    return str(stored.tag)


def run(*command: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """`command`'s standard output; its output in the assertion message when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def export_bento(workdir: Path, models: tuple[TinyModel, ...] = ()) -> Path:
    """The bento of `models` (default: RGB_MODEL and GRAY_MODEL), built as `make bento-export` builds
    it but from a copy of what a checkout holds for it, exported to workdir/checkout/build/bento.tar."""
    models = models or (RGB_MODEL, GRAY_MODEL)
    home = workdir / "bentoml-home"
    for model in models:
        register(model, home)
    context = workdir / "checkout"  # what bentoml build needs of a checkout, and nothing else
    shutil.copytree(REPO / "service", context / "service", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("bentofile.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, context)
    env = serve_env(home, SERVICE_MODELS=",".join(model.name for model in models))
    run(sys.executable, "-m", "service.dependencies", "build/requirements-serve.txt", cwd=context, env=env)
    run(sys.executable, "-m", "bentoml", "build", "-q", str(context), cwd=context, env=env)
    archive = context / "build" / "bento.tar"
    run(sys.executable, "-m", "bentoml", "export", "image_classifier:latest", str(archive), "-q", cwd=context, env=env)
    return archive


# --- images ----------------------------------------------------------------------------------------


JPEG_SAMPLE = encode(photo_like(60, 80), "JPEG", quality=90)
PNG_SAMPLE = encode(photo_like(50, 40, seed=1), "PNG")


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros: a few hundred kB that decode to width x height bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# --- bad input: one table for every image endpoint ------------------------------------------------

# The limits BAD_REQUESTS exceeds: a server that is sent the table runs with them. (too-many-images
# sends 5 images: over test_service_http's limit of 4 per request; /explain takes one.)
BAD_INPUT_LIMITS = {"SERVICE_MAX_IMAGE_PIXELS": "1000000", "SERVICE_MAX_BODY_BYTES": str(1 << 20)}


def huge_png() -> bytes:
    return png_bomb(2000, 1000)  # 2 000 000 pixels, over the limit of 1 000 000


def webp_canvas_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """An animated WebP whose header claims a width x height canvas (libwebp allocates it, twice,
    as soon as the file is opened), and nothing more."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x02\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + b"ANIM" + struct.pack("<I", 6) + bytes(6)
    return b"RIFF" + struct.pack("<I", len(body)) + body


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
HEIC = struct.pack(">I", 24) + b"ftypheic\0\0\0\0mif1heic" + struct.pack(">I", 8) + b"meta"
# The most an error answer may hold: client input is quoted to about 100 characters (errors.quoted).
MAX_ERROR_BYTES = 2048


BAD_REQUESTS = {
    # name: (request arguments, expected status, expected detail type[, expected detail loc])
    "not-an-image": (dict(images=[("notes.txt", b"just some text")]), 400, "not_an_image"),
    "truncated-jpeg": (dict(images=[("cut.jpg", JPEG_SAMPLE[: len(JPEG_SAMPLE) // 2])]), 400, "corrupt_image"),
    "corrupt-png": (dict(images=[("bad.png", PNG_SAMPLE[:60] + bytes(200) + PNG_SAMPLE[260:])]), 400, "corrupt_image"),
    "empty-file": (dict(images=[("empty.jpg", b"")]), 400, "empty_file"),
    "unsupported-format": (dict(images=[("a.tif", encode(photo_like(10, 10), "TIFF"))]), 415, "unsupported_format"),
    "too-many-pixels": (dict(images=[("bomb.png", None)]), 413, "too_many_pixels"),
    "too-many-images": (dict(images=[("a.jpg", JPEG_SAMPLE)] * 5), 400, "too_many_images"),
    "body-too-large": (dict(images=[("big.jpg", bytes(1 << 20))]), 413, "body_too_large"),
    "unknown-model": (dict(model="resnet9000"), 400, "unknown_model"),
    "top-k-zero": (dict(top_k=0), 400, "top_k_out_of_range"),
    "top-k-over-classes": (dict(top_k=4), 400, "top_k_out_of_range"),
    "missing-images": (dict(images=[], fields=[("model", RGB_MODEL.name)]), 400, "missing_field"),
    "misnamed-field": (dict(images=[], files=[("image", ("a.jpg", JPEG_SAMPLE))]), 400, "unknown_field"),
    "text-instead-of-file": (dict(images=[], fields=[("images", "http://example.com/cat.jpg")]), 400, "invalid_field"),
    "file-instead-of-text": (dict(files=[("model", ("model.txt", RGB_MODEL.name.encode()))]), 400, "invalid_field", ["model"]),
    # Other image formats: named, and refused as formats the service does not decode.
    "svg": (dict(images=[("drawing.svg", SVG)]), 415, "unsupported_format"),
    "heic": (dict(images=[("IMG_0001.HEIC", HEIC)]), 415, "unsupported_format"),
    "truncated-webp": (dict(images=[("cut.webp", encode(photo_like(30, 40), "WEBP")[:60])]), 400, "corrupt_image"),
    "truncated-gif": (dict(images=[("cut.gif", encode(photo_like(30, 40), "GIF")[:100])]), 400, "corrupt_image"),
    "png-signature-only": (dict(images=[("cut.png", PNG_SAMPLE[:8])]), 400, "corrupt_image"),
    "webp-canvas-bomb": (dict(images=[("bomb.webp", webp_canvas_bomb())]), 413, "too_many_pixels"),
    # Field values no client should send: quoted back to about 100 characters, never whole.
    "huge-model-name": (dict(model="m" * 500_000), 400, "unknown_model", ["model"]),
    "long-field-name": (dict(fields=[("x" * 3_000, "1")]), 400, "unknown_field"),
    "huge-part-header": (dict(fields=[("x" * 100_000, "1")]), 400, "malformed_body"),
    "nul-in-model": (dict(model="tiny\x00rgb"), 400, "unknown_model"),
    "non-utf8-model": (dict(fields=[("model", b"\xff\xfe\xc3(")]), 400, "unknown_model"),
    "model-given-twice": (dict(fields=[("model", RGB_MODEL.name), ("model", GRAY_MODEL.name)]), 400, "invalid_field", ["model"]),
    "deeply-nested-json": (dict(fields=[("model", "[" * 100_000)]), 400, "unknown_model"),
    "many-text-fields": (dict(fields=[("model", RGB_MODEL.name)] * 40), 400, "malformed_body"),
}
# Entries about a field of /classify alone (top_k of RGB_MODEL's 3 classes); the others hold for every image endpoint.
CLASSIFY_ONLY = ("top-k-zero", "top-k-over-classes")


def send_bad(server: Server, route: str, images, files=(), fields=(), **options) -> requests.Response:
    """A multipart request: `images` as files (None: huge_png()), `files` as they are, `fields` and
    `options` as text parts."""
    parts = [("images", (name, huge_png() if data is None else data)) for name, data in images]
    parts += list(files)
    parts += [(name, (None, value if isinstance(value, bytes) else str(value))) for name, value in [*fields, *options.items()]]
    return requests.post(server.url + route, files=parts, timeout=60)


def check_refusal(server: Server, route: str, name: str) -> None:
    """BAD_REQUESTS[name] sent to `route` is refused with its status and a JSON body naming the problem."""
    arguments, status, kind, *loc = BAD_REQUESTS[name]
    arguments = dict(arguments)
    images = arguments.pop("images", [("a.jpg", JPEG_SAMPLE)])
    response = send_bad(server, route, images, **arguments)
    assert response.status_code == status, response.text[:MAX_ERROR_BYTES]
    assert len(response.content) <= MAX_ERROR_BYTES, f"{len(response.content)} bytes: {response.text[:300]}"
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["detail"][0]["type"] == kind, body
    if loc:
        assert body["detail"][0]["loc"] == loc[0], body


# --- a real server ---------------------------------------------------------------------------------


def batch_concurrently(server: Server, models: list[str], image: bytes, rounds: int = 6):
    """Send concurrent one-image requests, spread over `models`, until BentoML has batched each
    model's calls (more images than calls) or `rounds` rounds are done: BentoML's batcher first
    learns each model's latency. Returns ({model: (calls, images)}, the last /metrics text)."""
    def one(i: int) -> int:
        files = [("images", ("image.jpg", image, "image/jpeg"))]
        return requests.post(server.url + "/classify", files=files, data={"model": models[i % len(models)]}, timeout=60).status_code

    for _ in range(rounds):
        with ThreadPoolExecutor(32) as pool:
            codes = set(pool.map(one, range(64 * len(models))))
        assert codes == {200}, codes
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        batched = {model: adaptive_batches(metrics, model) for model in models}
        if all(images > calls for calls, images in batched.values()):
            break
    return batched, metrics
