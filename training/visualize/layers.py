"""Which layers the report shows, and models that expose their outputs.

Every recipe's core is a chain up to `feature_map` (see recipes.py): the scratch, augmented, MNIST
and BaseNet cores are convolutions and poolings; the transfer and fine-tuned cores hold the
pretrained base as one nested model, "base", which is itself a graph of 150 layers or so
(MobileNetV2) with residual branches.

- Activations: every convolution and pooling layer of the core, as in the book. Inside a
  pretrained base, one layer per stage instead: the last layer at each spatial resolution, i.e.
  what the base has computed just before it downsamples, and its output (MobileNetV2 at 180x180:
  block_1_expand_relu 90x90, block_3_expand_relu 45x45, block_6_expand_relu 23x23,
  block_13_expand_relu 12x12, out_relu 6x6). Five legible grids instead of 150 (padding layers,
  which only add a border, are skipped).
- Filter patterns: the first convolution at each spatial resolution, the first convolution of each
  block (scratch: block1_conv ... block4_conv and feature_map; VGG16: block1_conv1 ... block5_conv1;
  MobileNetV2: Conv1 and the strided depthwise convolutions that open its stages).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

CONVOLUTIONS = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
POOLINGS = (layers.MaxPooling2D, layers.AveragePooling2D)
_NOT_SHOWN = (layers.ZeroPadding2D, layers.InputLayer)


@dataclass(frozen=True)
class LayerRef:
    """A layer of the core (`base` None) or of its nested pretrained base."""

    name: str
    base: str | None = None

    @property
    def title(self) -> str:
        return f"{self.base}/{self.name}" if self.base else self.name

    @property
    def file_stem(self) -> str:
        return self.title.replace("/", "_")


def _spatial(layer) -> tuple[int, int] | None:
    shape = layer.output.shape
    return tuple(shape[1:3]) if len(shape) == 4 else None


def _flattened(core: keras.Model) -> list[tuple[LayerRef, layers.Layer]]:
    """The core's layers in order, a nested base's layers in its place."""
    result = []
    for layer in core.layers:
        if isinstance(layer, keras.Model):
            result += [(LayerRef(inner.name, layer.name), inner) for inner in layer.layers]
        else:
            result.append((LayerRef(layer.name), layer))
    return result


def activation_layers(core: keras.Model) -> list[LayerRef]:
    refs = []
    for layer in core.layers:
        if isinstance(layer, keras.Model):
            refs += [LayerRef(name, layer.name) for name in stage_ends(layer)]
        elif isinstance(layer, CONVOLUTIONS + POOLINGS):
            refs.append(LayerRef(layer.name))
    return refs


def stage_ends(base: keras.Model) -> list[str]:
    """The last layer at each spatial resolution of a base (see the module's docstring)."""
    shown = [layer for layer in base.layers if _spatial(layer) and not isinstance(layer, _NOT_SHOWN)]
    return [layer.name for layer, following in zip(shown, shown[1:] + [None])
            if following is None or _spatial(following) != _spatial(layer)]


def pattern_layers(core: keras.Model) -> list[LayerRef]:
    """The first convolution at each spatial resolution (see the module's docstring)."""
    refs, seen = [], set()
    for ref, layer in _flattened(core):
        if isinstance(layer, CONVOLUTIONS) and _spatial(layer) not in seen:
            seen.add(_spatial(layer))
            refs.append(ref)
    return refs


def channels(core: keras.Model, ref: LayerRef) -> int:
    owner = core.get_layer(ref.base) if ref.base else core
    return int(owner.get_layer(ref.name).output.shape[-1])


def probe(core: keras.Model, refs: list[LayerRef], input_shape=None) -> keras.Model:
    """A model from pixels to the outputs of `refs` (one tensor for one ref), on inputs of `input_shape`
    (default: the core's).

    The core is called again, layer by layer, on a new input, and a nested base is cloned onto it
    sharing its layers (and so its weights): a functional model refuses other input sizes, and the
    filter patterns are computed on smaller images than the model's to be quick.
    """
    inputs = keras.Input(input_shape or core.input.shape[1:])
    wanted = {ref: None for ref in refs}
    x = inputs
    for layer in core.layers[1:]:
        if isinstance(layer, keras.Model):
            inner = [ref for ref in refs if ref.base == layer.name]
            tensors = [layer.get_layer(ref.name).output for ref in inner]
            last = next((i for i, tensor in enumerate(tensors) if tensor is layer.output), None)
            if last is None:
                tensors, last = tensors + [layer.output], len(tensors)
            clone = keras.models.clone_model(keras.Model(layer.input, tensors), input_tensors=keras.Input(x.shape[1:]),
                                             clone_function=lambda shared: shared)
            found = clone(x)
            wanted.update(zip(inner, found))
            x = found[last]
        else:
            x = layer(x)
            if LayerRef(layer.name) in wanted:
                wanted[LayerRef(layer.name)] = x
        if all(tensor is not None for tensor in wanted.values()):
            break
    outputs = [wanted[ref] for ref in refs]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])
