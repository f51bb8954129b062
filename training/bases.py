"""Pretrained convolutional bases from keras.applications, and where their weights come from.

`--base-weights imagenet` downloads through Keras (cached in ~/.keras/models); a path loads a local
file: a weights file of the base (`.weights.h5`, `.h5`: Keras' own ImageNet files, or
`base.save_weights(...)`), or a Keras model file (`.keras`) of one's own pretraining, whose layers of
the base's names give their weights (the base saved alone, or any model holding it, nested or
not: its own top is left out); `none` starts from random weights. The model records which of these
happened.
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


# A path given as --base-weights with this suffix is a whole Keras model, not a weights file.
MODEL_SUFFIX = ".keras"


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

    weights: "imagenet", "none" or a path to a weights file or model file (see above). When ImageNet weights cannot be had
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
        model, info = _from_file(Path(weights), _constructor(base)(weights=None, **kwargs), display)
    model.name = "base"
    return model, info


def imagenet_available(base: str, input_shape: tuple[int, int, int], *, alpha: float = 0.35) -> bool:
    """Whether ImageNet weights for `base` can be had: cached in ~/.keras/models, or downloaded now."""
    try:
        build_base(base, input_shape, "imagenet", alpha=alpha)
    except UserError:
        return False
    return True


def _from_file(path: Path, model: keras.Model, display: str) -> tuple[keras.Model, WeightsInfo]:
    """`model` (a randomly initialised base) with the weights of `path`: a model file or a weights file."""
    if not path.is_file():
        raise UserError(f"base weights file {path} does not exist")
    if path.name.endswith(MODEL_SUFFIX):
        _copy_weights(_load_model(path), model, path, display)
        return model, WeightsInfo("file", str(path.resolve()))
    try:
        model.load_weights(str(path))
    except ValueError as err:
        raise UserError(f"{path} does not fit {display}: {str(err).splitlines()[0]}") from None
    except OSError as err:  # h5py: not an HDF5 file, or a damaged one
        raise UserError(f"{path} is not a weights file Keras can read ({str(err).splitlines()[0]})") from None
    return model, WeightsInfo("file", str(path.resolve()))


def _load_model(path: Path) -> keras.Model:
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # keras reports a damaged or foreign file as many exception types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a Keras model file Keras can read ({first})") from None


def _layers_by_name(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included, by name (the innermost first found wins)."""
    found: dict[str, keras.layers.Layer] = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for name, inner in _layers_by_name(layer).items():
                found.setdefault(name, inner)
        found.setdefault(layer.name, layer)
    return found


def _copy_weights(source: keras.Model, base: keras.Model, path: Path, display: str) -> None:
    """Give every layer of `base` the weights of the same-named layer of `source`, or say what does not fit.

    By name, not by position, so that the base may sit anywhere in the saved model and the input
    size may differ (a convolution's weights do not depend on it)."""
    available = _layers_by_name(source)
    for layer in base.layers:
        if not layer.weights:
            continue
        other = available.get(layer.name)
        if other is None:
            raise UserError(f"{path} holds no {display} base: it has no layer {layer.name!r} "
                            "(expected the base saved alone or inside the saved model)")
        shapes, theirs = [tuple(w.shape) for w in layer.weights], [tuple(w.shape) for w in other.weights]
        if shapes != theirs:
            raise UserError(f"{path} does not fit {display}: layer {layer.name!r} has weights of shapes {theirs}, "
                            f"the base's are {shapes}")
        layer.set_weights(other.get_weights())
