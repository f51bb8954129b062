"""The recipes: one function per rung of the ladder, each returning a Keras model.

Every recipe builds a *core* model named "classifier" that maps plain pixels (0-255) to class
probabilities, with all rescaling inside. Its last convolutional activations come out of a layer
named "feature_map" (export pools them into the `features` output; Grad-CAM reads them). Training
wraps the core with the augmentation block when a recipe augments:

    image -> [augmentation] -> classifier: preprocessing -> convolutions -> feature_map -> head

so that the inference graph is the core alone: no augmentation layers, dropout off.
"""

from __future__ import annotations

from contextlib import contextmanager

import keras
import numpy as np
from keras import layers

from .bases import PreprocessInput
from .errors import UserError

CORE_NAME = "classifier"
AUGMENTATION_NAME = "augmentation"
FEATURE_MAP = "feature_map"


def output_layer(num_classes: int) -> layers.Dense:
    """One sigmoid unit for two classes, softmax for more (as in the seed documents)."""
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", name="predictions")
    return layers.Dense(num_classes, activation="softmax", name="predictions")


def augmentation(seed: int) -> keras.Sequential:
    """The seed's data augmentation: horizontal flips, rotations of up to 10%, zooms of up to 20%.

    Each layer gets its own seed, derived from the run's. Keras draws a layer's random numbers from
    its seed and a counter, so three layers given one seed draw the same numbers: every image's
    flip, angle and zoom were then one random number (a large rotation always came with a large
    zoom and no flip), and the augmented convnet overfitted as if it were barely augmented.
    """
    flip_seed, rotation_seed, zoom_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=flip_seed),
            layers.RandomRotation(0.1, seed=rotation_seed),
            layers.RandomZoom(0.2, seed=zoom_seed),
        ],
        name=AUGMENTATION_NAME,
    )


def _core(inputs, outputs, recipe: str) -> keras.Model:
    try:
        return keras.Model(inputs, outputs, name=CORE_NAME)
    except ValueError as err:  # pragma: no cover - raised while the layers are called
        raise UserError(f"cannot build the {recipe} recipe: {err}") from None


def _rescaled_input(input_shape: tuple[int, int, int]):
    """The model's input (plain pixels) and its rescaling to 0-1, inside the model."""
    inputs = keras.Input(shape=input_shape, name="image")
    return inputs, layers.Rescaling(1.0 / 255, name="rescaling")(inputs)


@contextmanager
def _fits(recipe: str, shape):
    """Turn Keras' "negative output size" into a clear error: the images are too small for the convolutions."""
    try:
        yield
    except ValueError as err:
        raise UserError(f"images of {shape[0]}x{shape[1]} pixels are too small for the {recipe} recipe "
                        f"({str(err).splitlines()[0]})") from None


def build_scratch(input_shape: tuple[int, int, int], num_classes: int, *, dropout: float = 0.0) -> keras.Model:
    """The seed's convnet from scratch: Conv2D 32-64-128-256-256 with max pooling in between."""
    inputs, x = _rescaled_input(input_shape)
    with _fits("scratch", input_shape):
        for block, filters in enumerate((32, 64, 128, 256), start=1):
            x = layers.Conv2D(filters, 3, activation="relu", name=f"block{block}_conv")(x)
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Conv2D(256, 3, activation="relu", name=FEATURE_MAP)(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return _core(inputs, output_layer(num_classes)(x), "scratch")


def build_mnist(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """The seed's MNIST convnet: Conv2D 32-64-128, two poolings, softmax."""
    inputs, x = _rescaled_input(input_shape)
    with _fits("mnist", input_shape):
        x = layers.Conv2D(32, 3, activation="relu", name="block1_conv")(x)
        x = layers.MaxPooling2D(2, name="block1_pool")(x)
        x = layers.Conv2D(64, 3, activation="relu", name="block2_conv")(x)
        x = layers.MaxPooling2D(2, name="block2_pool")(x)
        x = layers.Conv2D(128, 3, activation="relu", name=FEATURE_MAP)(x)
    x = layers.Flatten(name="flatten")(x)
    return _core(inputs, output_layer(num_classes)(x), "mnist")


def build_basenet(input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10) -> keras.Model:
    """The course practical's BaseNet: Conv 5x5 6, pool, Conv 5x5 16, pool, Dense 50, Dense N."""
    inputs, x = _rescaled_input(input_shape)
    with _fits("basenet", input_shape):
        x = layers.Conv2D(6, 5, activation="relu", name="block1_conv")(x)
        x = layers.MaxPooling2D(2, name="block1_pool")(x)
        x = layers.Conv2D(16, 5, activation="relu", name=FEATURE_MAP)(x)
        x = layers.MaxPooling2D(2, name="block2_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(50, activation="relu", name="dense")(x)
    return _core(inputs, output_layer(num_classes)(x), "basenet")


def build_transfer(input_shape: tuple[int, int, int], num_classes: int, base: keras.Model, base_name: str,
                   *, dropout: float = 0.5) -> keras.Model:
    """A frozen pretrained base with a new head: global average pooling, Dense 256, Dropout, output.

    The base runs in inference mode (`training=False`) even when layers of it are unfrozen later,
    so that its BatchNormalization statistics are never updated by our small dataset.
    """
    base.trainable = False
    inputs = keras.Input(shape=input_shape, name="image")
    x = PreprocessInput(base_name, name="preprocess_input")(inputs)
    x = base(x, training=False)
    x = layers.Identity(name=FEATURE_MAP)(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dense(256, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return _core(inputs, output_layer(num_classes)(x), "transfer")


def head_on_features(core: keras.Model) -> keras.Model:
    """The transfer head alone, fed with the base's pooled features (fast feature extraction).

    It shares its layers with `core`, so training it trains the full model's head.
    """
    features = core.get_layer("features").output
    inputs = keras.Input(shape=features.shape[1:], name="features")
    x = inputs
    for name in ("head_dense", "head_dropout", "predictions"):
        x = core.get_layer(name)(x)
    return keras.Model(inputs, x, name="head")


def feature_extractor(core: keras.Model) -> keras.Model:
    """Pixels to the base's pooled features: what fast feature extraction runs once over the data."""
    return keras.Model(core.input, core.get_layer("features").output, name="feature_extractor")


# How many of a base's last layers fine-tuning unfreezes by default. The book's 4 is VGG16's block 5
# (three convolutions and a pooling: 7 million weights). MobileNetV2's last 4 layers hold a single
# 1x1 convolution; fine-tuning all of it (BatchNormalization still frozen) does better on cats vs
# dogs (the runs and their figures: docs/results.md, "Fine-tuning: the whole base").
UNFREEZE_DEFAULTS = {"vgg16": 4, "resnet50": 4, "mobilenet_v2": None}  # None: every layer


def default_unfreeze(core: keras.Model, architecture: str) -> int:
    count = UNFREEZE_DEFAULTS.get(architecture, 4)
    return len(core.get_layer("base").layers) if count is None else count


def unfreeze_top(core: keras.Model, count: int) -> list[str]:
    """Unfreeze the base's last `count` layers, BatchNormalization excepted; return the unfrozen names."""
    base = core.get_layer("base")
    if not 0 <= count <= len(base.layers):
        raise UserError(f"--unfreeze must be between 0 and {len(base.layers)} (the base's layers), not {count}")
    base.trainable = True
    unfrozen = []
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= len(base.layers) - count and not isinstance(layer, layers.BatchNormalization)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def assemble(core: keras.Model, *, augment: bool, seed: int, name: str) -> keras.Model:
    """The training model: the core, behind the augmentation block when the recipe augments."""
    inputs = keras.Input(shape=core.input.shape[1:], name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    return keras.Model(inputs, core(x), name=name.replace("-", "_"))


def core_of(model: keras.Model) -> keras.Model:
    """The inference core of a training model (the model itself if it is one)."""
    try:
        return model.get_layer(CORE_NAME)
    except ValueError:
        return model


def compile_model(model: keras.Model, num_classes: int, *, optimizer: str, learning_rate: float) -> None:
    """Compile with the loss and accuracy of the output layer, every variable of training made now.

    A variable that the first training step creates (the optimizer's slots, a metric named by a
    string) makes tf.function trace that whole step a second time, for MobileNetV2 most of the
    wait before its first batch (docs/results.md, "The demo offline"). So the accuracy is a metric
    object and the optimizer is built here, on the variables trainable now: compile again after
    changing which layers train.
    """
    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    binary = num_classes == 2
    accuracy = keras.metrics.BinaryAccuracy if binary else keras.metrics.SparseCategoricalAccuracy
    model.compile(
        optimizer=optimizers[optimizer](learning_rate=learning_rate),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=[accuracy(name="accuracy")],
    )
    model.optimizer.build(model.trainable_variables)
