"""Pretrained convolutional bases from keras.applications, and where their weights come from.

`--base-weights imagenet` downloads through Keras (cached in ~/.keras/models); a path loads a local
weights file; `none` starts from random weights. The model records which of these happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras

from .errors import UserError

# name -> (constructor, preprocess_input, display name). Each base keeps its own preprocessing.
BASES = {
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "vgg16": ("VGG16", "vgg16"),
    "resnet50": ("ResNet50", "resnet50"),
}
MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


@dataclass
class WeightsInfo:
    """Where a base's weights came from, as recorded in the manifest."""

    weights: str  # "imagenet", "file" or "random"
    source: str


@keras.saving.register_keras_serializable(package="training")
class PreprocessInput(keras.layers.Layer):
    """`keras.applications.<base>.preprocess_input` as a layer, so that the model takes plain pixels."""

    def __init__(self, base: str, **kwargs):
        super().__init__(**kwargs)
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}")
        self.base = base

    def call(self, inputs):
        module = getattr(keras.applications, BASES[self.base][1])
        return module.preprocess_input(inputs)

    def get_config(self):
        return {**super().get_config(), "base": self.base}


def _constructor(base: str):
    return getattr(keras.applications, BASES[base][0])


def build_base(base: str, input_shape: tuple[int, int, int], weights: str, *, alpha: float = 0.35,
               fallback_to_random: bool = False) -> tuple[keras.Model, WeightsInfo]:
    """The base without its top, named "base", and where its weights came from.

    weights: "imagenet", "none" or a path to a weights file. When ImageNet weights cannot be had
    (no network, nothing cached), `fallback_to_random` says so in one line and uses random weights;
    otherwise it is an error that names the PATH option.
    """
    if base not in BASES:
        raise UserError(f"unknown base {base!r}: choose from {', '.join(BASES)}")
    kwargs = {"include_top": False, "input_shape": input_shape}
    if base == "mobilenet_v2":
        if alpha not in MOBILENET_ALPHAS:
            raise UserError(f"MobileNetV2 alpha must be one of {MOBILENET_ALPHAS}, not {alpha}")
        kwargs["alpha"] = alpha
    display = BASES[base][0] + (f" alpha {alpha:g}" if base == "mobilenet_v2" else "")
    if min(input_shape[:2]) < 32:
        raise UserError(f"{display} needs images of at least 32x32 pixels, not {input_shape[0]}x{input_shape[1]}")

    if weights == "none":
        model, info = _constructor(base)(weights=None, **kwargs), WeightsInfo("random", "random initialisation (--base-weights none)")
    elif weights == "imagenet":
        try:
            model = _constructor(base)(weights="imagenet", **kwargs)
            info = WeightsInfo("imagenet", "keras.applications (downloaded or cached in ~/.keras/models)")
        except Exception as err:  # keras raises a bare Exception for a failed download
            if "URL fetch failure" not in str(err) and not isinstance(err, OSError):
                raise
            reason = f"ImageNet weights for {display} could not be downloaded and are not cached in ~/.keras/models"
            if not fallback_to_random:
                raise UserError(f"{reason}; download the weights file elsewhere and pass --base-weights PATH") from None
            print(f"note: {reason}: using random weights instead (pass --base-weights PATH to use a local file)")
            model, info = _constructor(base)(weights=None, **kwargs), WeightsInfo("random", f"random initialisation: {reason}")
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"base weights file {path} does not exist")
        try:
            model = _constructor(base)(weights=str(path), **kwargs)
        except ValueError as err:
            raise UserError(f"{path} does not fit {display}: {str(err).splitlines()[0]}") from None
        except OSError as err:  # h5py: not an HDF5 file, or a damaged one
            raise UserError(f"{path} is not a weights file Keras can read ({str(err).splitlines()[0]})") from None
        info = WeightsInfo("file", str(path.resolve()))
    model.name = "base"
    return model, info
