"""Grad-CAM heatmaps from the exported model's outputs, with numpy and Pillow only.

The model package (docs/model-package.md) gives, for each image, the `feature_map` activations
A [h, w, K] (an output of model.onnx) and, from gradcam.onnx run on them, the `gradcam_weights`
[classes, K]: each class score's gradient with respect to A, averaged over the positions
(training/gradcam.py says how). What is left is Grad-CAM's last step, as Keras' Grad-CAM example
does it:

    heatmap = ReLU(sum_k weights[c, k] * A[:, :, k]), divided by its maximum

then the picture: the heatmap is upsampled (bilinear) onto the image, each feature-map position
at the centre of its receptive field (the manifest's `export.gradcam.feature_map_centres`, in the
model's input, which is the whole image resized), coloured with the Turbo colour map, laid over
the image, more opaque where the heat is higher, and encoded as PNG.

A request's stages (POST /explain):
    explain queue       `infer`, a batch at a time: model.onnx, gradcam.onnx on its feature map, then
                        every class's heatmap [N, classes, h, w]
    the request         `class_index` (the predicted class, or the label asked for), then
                        `overlay_png`: upsample, colour, overlay, PNG; `centres(manifest)` once per model
A package exported before Grad-CAM was added has no gradcam.onnx: `gradcam_file(manifest)` is None.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Google's Turbo colour map (Apache 2.0), sampled at 13 evenly spaced points: dark blue for no
# evidence, through cyan, green and yellow, to dark red for the most.
TURBO = np.array([
    (48, 18, 59), (67, 78, 186), (70, 133, 250), (40, 188, 235), (26, 228, 182), (85, 250, 118), (164, 252, 60),
    (217, 228, 54), (250, 186, 57), (251, 126, 33), (228, 69, 10), (185, 30, 2), (122, 4, 3),
], dtype=np.float32)
# The overlay's opacity goes from MIN_OPACITY where the heatmap is 0 to MAX_OPACITY where it is 1,
# so the image stays visible where the model found no evidence.
MIN_OPACITY, MAX_OPACITY = 0.25, 0.7
# The overlay's longer side: the image's own, but at least this (small model inputs such as
# MNIST's 28 pixels become visible) and at most that (a photo does not become a 30 MB PNG).
SMALLEST_SIDE, LARGEST_SIDE = 256, 512


# gradcam.onnx's input and output (docs/model-package.md); engine.check makes sure a package's has them.
GRADCAM_INPUT, GRADCAM_OUTPUT = "feature_map", "gradcam_weights"


def gradcam_file(manifest: dict) -> str | None:
    """The package's Grad-CAM graph (relative to the package), or None for a package exported
    before there was one: it cannot explain."""
    export = manifest.get("export") or {}
    if "feature_map" not in (export.get("outputs") or {}):
        return None
    return ((export.get("gradcam") or {}).get("onnx") or {}).get("path")


def infer(session, gradcam_session, input_name: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A batch [N, H, W, C] (float32 0-255) through model.onnx's `session` and gradcam.onnx's:
    probabilities [N, classes] and every class's heatmap [N, classes, h, w] in [0, 1]."""
    probabilities, feature_map = session.run(["probabilities", "feature_map"], {input_name: images})
    (weights,) = gradcam_session.run([GRADCAM_OUTPUT], {GRADCAM_INPUT: feature_map})
    return probabilities, heatmaps(feature_map, weights)


def heatmaps(feature_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Grad-CAM: activations [N, h, w, K] and weights [N, classes, K] -> [N, classes, h, w] float32 in [0, 1].

    Each map is ReLU(sum_k weights[c, k] * A[:, :, k]) divided by its maximum; all zeros when no
    position has positive evidence for the class.
    """
    cam = np.maximum(np.einsum("nhwk,nck->nchw", np.asarray(feature_map, np.float32), np.asarray(weights, np.float32)), 0.0)
    peak = cam.max(axis=(2, 3), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def class_index(classes, probabilities: np.ndarray, label: str | None = None) -> int:
    """The class to explain: `label` if given (ValueError if it is not one of `classes`), else the most probable."""
    if label is None or label == "":
        return int(np.argmax(probabilities))
    if label not in classes:
        raise ValueError(f"unknown label {label!r}; the model's classes: {', '.join(classes)}")
    return list(classes).index(label)


def colorize(heat: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 Turbo colours, interpolated linearly between the samples."""
    position = np.clip(heat, 0.0, 1.0) * (len(TURBO) - 1)
    low = np.minimum(position.astype(np.intp), len(TURBO) - 2)
    fraction = (position - low)[..., None]
    return np.rint(TURBO[low] * (1 - fraction) + TURBO[low + 1] * fraction).astype(np.uint8)


def display_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the overlay: the image's aspect ratio, its longer side within the limits."""
    longer = max(height, width)
    scale = min(max(longer, SMALLEST_SIDE), LARGEST_SIDE) / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


Centres = tuple[tuple[float, float], tuple[float, float]]


def centres_of(geometry: dict, height: int, width: int) -> Centres:
    """{"y"|"x": {"offset", "stride"}} in pixels of a height x width model input -> fractions of the image."""
    return tuple((geometry[axis]["offset"] / n, geometry[axis]["stride"] / n) for axis, n in (("y", height), ("x", width)))


def centres(manifest: dict) -> Centres | None:
    """((offset, stride) along y, along x) of the feature-map positions, as fractions of the image's
    height and width, from the manifest; None for a package exported without them."""
    try:
        return centres_of(manifest["export"]["gradcam"]["feature_map_centres"], manifest["input"]["height"],
                          manifest["input"]["width"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _sampling(length: int, positions: int, offset: float, stride: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `length` output pixels: the two feature-map positions around it and the weight of the second."""
    where = ((np.arange(length) + 0.5) / length - offset) / stride  # in feature-map positions
    where = np.clip(where, 0, positions - 1)  # beyond the outermost centres the heat stays level
    low = np.minimum(np.floor(where).astype(np.intp), max(positions - 2, 0))
    high = np.minimum(low + 1, positions - 1)
    return low, high, (where - low).astype(np.float32)


def upsample(heat: np.ndarray, height: int, width: int, where: Centres | None = None) -> np.ndarray:
    """Bilinear interpolation of a [h, w] heatmap onto [height, width] pixels, float32.

    `where`: see centres(); None spreads the positions evenly over the image (a plain resize with
    half-pixel centres, as Keras' Grad-CAM example does).
    """
    heat = np.asarray(heat, np.float32)
    h, w = heat.shape
    (oy, sy), (ox, sx) = where or ((0.5 / h, 1 / h), (0.5 / w, 1 / w))
    y_low, y_high, y_frac = _sampling(height, h, oy, sy)
    x_low, x_high, x_frac = _sampling(width, w, ox, sx)
    rows = heat[y_low] + (heat[y_high] - heat[y_low]) * y_frac[:, None]
    return rows[:, x_low] + (rows[:, x_high] - rows[:, x_low]) * x_frac[None, :]


def overlay(image: np.ndarray, heat: np.ndarray, where: Centres | None = None) -> np.ndarray:
    """The heatmap over the image: uint8 [H, W, 1 or 3] and [h, w] in [0, 1] -> uint8 RGB [H', W', 3].

    [H', W'] is display_size(H, W); grayscale images are shown in gray; `where`: see upsample.
    """
    height, width = display_size(*image.shape[:2])
    picture = Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)).convert("RGB")
    picture = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    heat = np.clip(upsample(heat, height, width, where), 0.0, 1.0)
    opacity = (MIN_OPACITY + (MAX_OPACITY - MIN_OPACITY) * heat)[..., None]
    blended = picture * (1 - opacity) + colorize(heat).astype(np.float32) * opacity
    return np.rint(blended).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(image: np.ndarray, heat: np.ndarray, where: Centres | None = None) -> bytes:
    """One heatmap [h, w] (a row of `infer`'s heatmaps) over the decoded, oriented picture
    (uint8 [H, W, C], service.imaging.decode), as PNG bytes; `where`: centres(manifest)."""
    return encode_png(overlay(image, heat, where))
