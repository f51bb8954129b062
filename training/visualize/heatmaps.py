"""The report's Grad-CAM figures: the model's input, the heatmap, and the heatmap over the image.

The heatmap is computed from the Keras model with tf.GradientTape (training/gradcam.py), and
drawn over the image by the service's own code (service/explain.py, numpy and Pillow), so the
report shows what `POST /explain` answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap

from service import explain

from ..gradcam import feature_map_centres, keras_gradcam
from .figures import DPI, plt

TURBO = ListedColormap(explain.colorize(np.linspace(0, 1, 256)) / 255.0, name="turbo")


def write_gradcam_figure(core, model_input: np.ndarray, picture: np.ndarray, class_name: str, class_index: int,
                         probability: float, predicted: bool, path: Path) -> None:
    """Save the figure for one class.

    `model_input`: the image as the model takes it [H, W, C], float32 0-255; `picture`: the
    decoded, oriented image at its own size, uint8 [H', W', C].
    """
    heat = keras_gradcam(core, model_input[None], class_index)[0]
    where = explain.centres_of(feature_map_centres(core), *model_input.shape[:2])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), dpi=DPI, constrained_layout=True)
    shown_input = np.clip(model_input, 0, 255).astype(np.uint8)
    axes[0].imshow(shown_input[..., 0] if shown_input.shape[-1] == 1 else shown_input, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"model input, {model_input.shape[0]}x{model_input.shape[1]}")
    image = axes[1].imshow(heat, cmap=TURBO, vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"heatmap on the {heat.shape[0]}x{heat.shape[1]} feature map" if heat.max() > 0 else
                      "no position has positive evidence")
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(explain.overlay(picture, heat, where))
    axes[2].set_title("over the image")
    for ax in axes:
        ax.set_axis_off()
    why = "the predicted class" if predicted else "the class asked for"
    fig.suptitle(f"Grad-CAM: where the evidence for '{class_name}' lies ({why}, probability {probability:.1%})")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
