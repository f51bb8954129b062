"""Export: a trained Keras model to SavedModel and ONNX, proven equal, registered with BentoML.

The exported graph is the inference model: the core of the trained model (no augmentation
layers), called with `training=False` (dropout off), with three named outputs:

- `probabilities` [N, classes]: a one-unit sigmoid output p is exported as [1 - p, p];
- `features` [N, D]: global average pooling of the `feature_map` layer;
- `feature_map` [N, h, w, D]: the `feature_map` layer's activations (computed anyway: free).

Grad-CAM's other half is a graph of its own, gradcam.onnx: `feature_map` in, `gradcam_weights`
[N, classes, D] out, each class score's gradient with respect to `feature_map` averaged over the
positions (training/gradcam.py). Only POST /explain runs it: ONNX Runtime runs every node of a
graph whatever outputs are asked for, so in model.onnx it would cost every classification (for a
GAP-Dense-Dense head, classes x 256 x D multiply-adds per image).

Every export runs ONNX Runtime (CPU) and Keras on real images of the model's dataset plus random
inputs, and fails unless they agree (largest absolute difference of `probabilities` at most 1e-4,
same top-1 label; `feature_map` within 1e-4 of its largest value, and gradcam.onnx's weights on
ONNX Runtime's feature map within as much of tf.GradientTape's on Keras'). The figures go into the manifest.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from service.package import sha256

from .data import load_datasets
from .errors import UserError
from .gradcam import GradCamWeights, feature_map_centres, gradient_tape_weights, head_layers
from .manifest import KERAS_FILE, MANIFEST, library_versions, load_keras_model, now, read_manifest, write_json
from .recipes import FEATURE_MAP, core_of
from .reevaluate import dataset_of, hyperparameters_of

# Opset 17 runs on every ONNX Runtime of the last years (>= 1.12) and holds every op these models use.
OPSET = 17
TOLERANCE = 1e-4
ONNX_FILE = "model.onnx"
GRADCAM_FILE = "gradcam.onnx"
SAVED_MODEL_DIR = "saved_model"
STAGING_DIR = ".export-in-progress"
# What goes into the BentoML model store: what serving and TF Serving need, not the training state.
PACKAGE_FILES = (MANIFEST, ONNX_FILE, GRADCAM_FILE, SAVED_MODEL_DIR, "evaluation.json", "history.json", "curves.png")
# How the service turns feature_map and gradcam_weights into a heatmap (docs/model-package.md).
GRADCAM_RECORD = {
    "onnx": {"path": GRADCAM_FILE, "input": "feature_map", "output": "gradcam_weights"},
    "class_score": "logit (the output layer's pre-activation); a one-unit sigmoid model's class 0 scores -logit",
    "heatmap": "relu(sum over k of gradcam_weights[c, k] * feature_map[:, :, k]) / its maximum",
    "placement": "feature_map_centres: position i's receptive field is centred at offset + stride * i input pixels",
}
PARITY_IMAGES = 32
PARITY_RANDOM = 8


def inference_model(model: keras.Model) -> keras.Model:
    """The trained model's core with the named outputs of the contract."""
    core = core_of(model)
    probabilities = core.output
    if probabilities.shape[-1] == 1:
        probabilities = keras.layers.Concatenate(name="two_class_probabilities")([1.0 - probabilities, probabilities])
    feature_map = core.get_layer(FEATURE_MAP).output
    features = keras.layers.GlobalAveragePooling2D(name="pooled_feature_map")(feature_map)
    return keras.Model(core.input, {"probabilities": probabilities, "features": features, "feature_map": feature_map},
                       name="inference")


def gradcam_model(model: keras.Model) -> keras.Model:
    """`feature_map` activations in, Grad-CAM weights out: the derivative of the trained model's head."""
    core = core_of(model)
    feature_map = keras.Input(core.get_layer(FEATURE_MAP).output.shape[1:], name="feature_map")
    weights = GradCamWeights(head_layers(core), name="gradcam_weights")(feature_map)
    return keras.Model(feature_map, {"gradcam_weights": weights}, name="gradcam")


def _serving_function(model: keras.Model, input_name: str = "image"):
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input.shape[1:]), tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(inputs):
        outputs = model(inputs, training=False)
        return {name: outputs[name] for name in model.output}

    return serve, spec


def write_saved_model(inference: keras.Model, path: Path) -> None:
    """SavedModel with a `serving_default` signature: input `image`, outputs by name."""
    serve, spec = _serving_function(inference)
    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=[spec])
    shutil.rmtree(path, ignore_errors=True)
    archive.write_out(str(path), verbose=False)


def write_onnx(model: keras.Model, path: Path, opset: int = OPSET, input_name: str = "image") -> None:
    import onnx
    import tf2onnx

    serve, spec = _serving_function(model, input_name)
    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    # Name the dynamic batch dimension, so that every tool shows [batch, H, W, C], and give every
    # output the static shape Keras knows (tf2onnx loses some through the Grad-CAM weights' concat).
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for value in model_proto.graph.output:
        for dim, size in zip(value.type.tensor_type.shape.dim[1:], model.output[value.name].shape[1:]):
            dim.dim_value = int(size)
    onnx.checker.check_model(model_proto)
    onnx.save(model_proto, str(path))


def onnx_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity_inputs(model_dir: Path, manifest: dict, data: str | None, seed: int = 0) -> tuple[np.ndarray, int]:
    """Real images of the model's dataset (test split, else validation) plus random pixels."""
    try:
        ds = load_datasets(data or dataset_of(manifest), hyperparameters_of(manifest),
                           mnist=manifest["dataset"]["kind"] == "mnist", cache_dir=model_dir / "cache")
    except UserError as err:
        raise UserError(f"cannot check parity on real images: {err}; pass --data DIR") from None
    split = ds.test if ds.test is not None else ds.validation
    if split is None:
        where = data or dataset_of(manifest)
        raise UserError(f"cannot check parity on real images: {where} has no test/ or validation/ folder and the model was "
                        "trained without a validation split; pass --data DIR with one")
    images = []
    for batch, _ in split:
        images.append(np.asarray(batch))
        if sum(len(b) for b in images) >= PARITY_IMAGES:
            break
    real = np.concatenate(images)[:PARITY_IMAGES]
    random = np.random.default_rng(seed).uniform(0, 255, size=(PARITY_RANDOM, *real.shape[1:])).astype(np.float32)
    return np.concatenate([real, random]), len(real)


def check_parity(inference: keras.Model, onnx_path: Path, inputs: np.ndarray, real_images: int,
                 model_dir: Path | None = None) -> dict:
    """Compare ONNX Runtime with Keras on `inputs`; raise UserError with the figures if they differ.

    `model_dir` names the model in the message (default: the folder of `onnx_path`)."""
    model_dir = model_dir or onnx_path.parent
    expected = inference(inputs, training=False)
    session = onnx_session(onnx_path)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": inputs})))
    diff_p = float(np.abs(got["probabilities"] - np.asarray(expected["probabilities"])).max())
    diff_f = float(np.abs(got["features"] - np.asarray(expected["features"])).max())
    agree = float((got["probabilities"].argmax(1) == np.asarray(expected["probabilities"]).argmax(1)).mean())
    _, tape_weights = gradient_tape_weights(inference, inputs)
    (onnx_weights,) = onnx_session(onnx_path.with_name(GRADCAM_FILE)).run(None, {"feature_map": got["feature_map"]})
    gradcam = {
        "max_rel_diff_feature_map": _relative_difference(got["feature_map"], expected["feature_map"]),
        "max_rel_diff_gradcam_weights_vs_gradient_tape": _relative_difference(onnx_weights, tape_weights),
    }
    figures = {
        "images": real_images,
        "random_inputs": len(inputs) - real_images,
        "max_abs_diff_probabilities": diff_p,
        "max_abs_diff_features": diff_f,
        **gradcam,
        "top1_agreement": agree,
        "tolerance": TOLERANCE,
        "runtime": "onnxruntime CPUExecutionProvider",
    }
    if diff_p > TOLERANCE or agree < 1.0:
        raise UserError(
            f"ONNX export of {model_dir} does not compute what the Keras model does: largest difference in "
            f"probabilities {diff_p:.2e} (allowed {TOLERANCE:.0e}), top-1 agreement {agree:.1%} on {len(inputs)} inputs"
        )
    worst = max(gradcam, key=gradcam.get)
    if gradcam[worst] > TOLERANCE:
        raise UserError(f"Grad-CAM outputs of {model_dir} are off: {worst.removeprefix('max_rel_diff_')} differs by "
                        f"{gradcam[worst]:.2e} of its largest value (allowed {TOLERANCE:.0e}) on {len(inputs)} inputs")
    return figures


def _relative_difference(got, expected) -> float:
    """Largest absolute difference, as a fraction of the largest absolute expected value."""
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max())
    return float(np.abs(np.asarray(got) - expected).max()) / scale if scale > 0 else float(np.abs(np.asarray(got)).max())


def file_records(model_dir: Path, names) -> dict[str, dict]:
    """sha256 and size of every file under `names` (files or folders), by relative path."""
    records = {}
    for name in names:
        path = model_dir / name
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                records[str(file.relative_to(model_dir))] = {"sha256": sha256(file), "bytes": file.stat().st_size}
    return records


def _without_nulls(value):
    """BentoML metadata takes no None: drop null entries (a missing key reads the same)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value if v is not None]
    return value


def register(model_dir: Path, manifest: dict) -> str:
    """Copy the package into the BentoML model store as a new version of `name`; return the tag."""
    import bentoml

    labels = {"recipe": manifest["recipe"], "project": "convnet-serving"}
    with bentoml.models.create(manifest["name"], labels=labels, metadata=_without_nulls(manifest)) as bento_model:
        target = Path(bento_model.path)
        for name in PACKAGE_FILES:
            source = model_dir / name
            if source.is_dir():
                shutil.copytree(source, target / name)
            elif source.is_file():
                shutil.copy2(source, target / name)
        tag = str(bento_model.tag)
        write_json(target / MANIFEST, {**manifest, "bentoml": {"tag": tag}})
    return tag


def _replace(source: Path, target: Path) -> None:
    """Move a file or folder onto `target`, removing what was there."""
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(source, target)


def export_model(model_dir: str | Path, *, data: str | None = None, register_model: bool = True, opset: int = OPSET) -> dict:
    """Export one trained model folder; return its extended manifest."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if "metrics" not in manifest:
        raise UserError(f"{model_dir} holds no finished training run")
    model = load_keras_model(model_dir)
    start = time.perf_counter()
    inputs, real = parity_inputs(model_dir, manifest, data)
    inference = inference_model(model)
    gradcam = gradcam_model(model)
    # The new files are written aside and replace the previous export's only once they pass.
    staging = model_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write_saved_model(inference, staging / SAVED_MODEL_DIR)
        write_onnx(inference, staging / ONNX_FILE, opset)
        write_onnx(gradcam, staging / GRADCAM_FILE, opset, input_name="feature_map")
        parity = check_parity(inference, staging / ONNX_FILE, inputs, real, model_dir)
        for name in (SAVED_MODEL_DIR, ONNX_FILE, GRADCAM_FILE):
            _replace(staging / name, model_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    shape = [None, *inference.input.shape[1:]]
    outputs = {name: {"shape": [None, *map(int, tensor.shape[1:])], "dtype": "float32"} for name, tensor in inference.output.items()}
    manifest["export"] = {
        "created_at": now(),
        "seconds": round(time.perf_counter() - start, 1),
        "input": {"name": "image", "shape": shape, "dtype": "float32"},
        "outputs": outputs,
        "onnx": {"path": ONNX_FILE, "opset": opset},
        "saved_model": {"path": SAVED_MODEL_DIR, "signature": "serving_default", "tags": ["serve"]},
        "gradcam": {**GRADCAM_RECORD, "weights_shape": [None, *map(int, gradcam.output["gradcam_weights"].shape[1:])],
                    "feature_map_centres": feature_map_centres(core_of(model))},
        "parity": parity,
        "versions": library_versions("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy"),
    }
    manifest["files"] = file_records(model_dir, (KERAS_FILE, ONNX_FILE, GRADCAM_FILE, SAVED_MODEL_DIR))
    write_json(model_dir / MANIFEST, manifest)
    if register_model:
        tag = register(model_dir, manifest)
        manifest.setdefault("registered", []).append({"tag": tag, "at": now()})
        write_json(model_dir / MANIFEST, manifest)
    return manifest


def is_exported(model_dir: Path) -> bool:
    """True when the folder's export is of the model.keras it holds now."""
    manifest = read_manifest(model_dir)
    recorded = manifest.get("files", {}).get(KERAS_FILE, {}).get("sha256")
    return "export" in manifest and recorded == file_records(model_dir, [KERAS_FILE])[KERAS_FILE]["sha256"]


def export_if_changed(model_dir: Path, *, register_model: bool = True) -> dict:
    """Export the folder unless its export is already of its model.keras; print one line; return the manifest."""
    if is_exported(model_dir):
        manifest = read_manifest(model_dir)
        print(f"{manifest['name']}: already exported from this model.keras, keeping that export")
        return manifest
    manifest = export_model(model_dir, register_model=register_model)
    print(export_line(manifest))
    return manifest


def export_line(manifest: dict) -> str:
    parity = manifest["export"]["parity"]
    tags = manifest.get("registered") or [{"tag": "not registered"}]
    return (f"{manifest['name']:<12} exported: ONNX opset {manifest['export']['onnx']['opset']}, SavedModel; "
            f"parity max |diff| {parity['max_abs_diff_probabilities']:.1e} on {parity['images']} images + "
            f"{parity['random_inputs']} random inputs; {tags[-1]['tag']}")
