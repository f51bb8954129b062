"""Grad-CAM (Selvaraju et al., 2017): where in an image the evidence for a class lies.

With A [h, w, K] the activations of the layer named `feature_map` and y_c the score of class c:

    weights[c, k] = mean over the positions (i, j) of  d y_c / d A[i, j, k]
    heatmap_c     = ReLU(sum_k weights[c, k] * A[:, :, k]), divided by its maximum

The class score is the logit, the output layer's pre-activation, as in the paper and in Keras'
Grad-CAM example (which removes the last layer's softmax): a probability near 1 saturates and
its gradient vanishes. A one-unit sigmoid model has one logit z: class 1's score is z and class
0's is -z (p0 = sigmoid(-z)). For these binary models the probability gives the same heatmap,
since dp/dA = p(1 - p) dz/dA only rescales it.

The weights are computed twice, and the export checks that both agree:

- `gradient_tape_weights`: automatic differentiation with tf.GradientTape, the way Keras'
  Grad-CAM example does it. The reference.
- `GradCamWeights`: the same derivative written out in forward operations for the heads the
  recipes build (pooling, Flatten or GlobalAveragePooling2D, Dense layers with ReLU, Dropout),
  so that it can be exported to ONNX and the service needs no TensorFlow. tf2onnx 1.17 converts
  none of TensorFlow's gradient kernels (ReluGrad, MaxPoolGrad, StridedSliceGrad): a graph that
  calls tf.GradientTape does not run in ONNX Runtime.

Writing the derivative out, from the logits back to A:
- last Dense, logits = v W + b: d y_c / d v = W[:, c];
- hidden Dense with ReLU, v' = relu(v W + b): multiply by the mask (v' > 0), then by W^T
  (TensorFlow's ReluGrad also passes nothing where the activation is 0);
- Flatten: the gradient of v reshaped to [h', w', K];
- GlobalAveragePooling2D: g[k] / (h' w') at every position;
- max or average pooling between `feature_map` and Flatten: each pooled value hands its gradient on
  to the positions of its window with total weight 1 (max pooling all of it to the maximum), so
  the sum of the gradient over the positions is the same before and after the pooling; and the
  sum is all Grad-CAM needs (weights = sum / (h w)), whichever position won a tie.

Where the heatmap goes on the image: `feature_map_centres` gives, per axis, the centre of each
position's receptive field in the model's input, offset + stride * i (pixels, the input's edge at
0). Keras' example stretches the heatmap over the whole image instead, which is right for
'same'-padded networks (the pretrained bases) but not for the recipes' own 'valid' convolutions:
the scratch convnet's 7x7 map at 180x180 has its centres from 39 to 135, and stretched it would
show evidence up to 1.6 times too far from the image's centre.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from .errors import UserError
from .recipes import FEATURE_MAP

OUTPUT_LAYER = "predictions"
_POOLING = (layers.MaxPooling2D, layers.AveragePooling2D)
_PASS_THROUGH = (layers.Dropout, layers.Identity)  # identities at inference


def _activation(layer: layers.Dense) -> str:
    return keras.activations.serialize(layer.activation)  # "relu", "linear", ...


def head_layers(model: keras.Model) -> list[layers.Layer]:
    """The layers from `feature_map` (excluded) to the output layer, in order."""
    names = [layer.name for layer in model.layers]
    if FEATURE_MAP not in names or names[-1] != OUTPUT_LAYER:
        raise UserError(f"model {model.name} has no layer {FEATURE_MAP!r} followed by an output layer {OUTPUT_LAYER!r}")
    return model.layers[names.index(FEATURE_MAP) + 1:]


class GradCamWeights(layers.Layer):
    """Grad-CAM weights [N, classes, K] from the `feature_map` activations [N, h, w, K].

    `head`: the model's layers after `feature_map` (see head_layers). A one-unit sigmoid output
    gives two classes, [-w, w]. Raises UserError for a head it cannot differentiate.
    """

    def __init__(self, head: list[layers.Layer], **kwargs):
        super().__init__(**kwargs)
        self.pooling, self.hidden, self.reduce, self.output_layer = self._parse(head)

    @staticmethod
    def _parse(head):
        pooling, hidden, reduce = [], [], None
        *body, output_layer = head
        for layer in body:
            if isinstance(layer, _PASS_THROUGH):
                continue
            if reduce is None and isinstance(layer, _POOLING):
                pooling.append(layer)
            elif reduce is None and isinstance(layer, (layers.Flatten, layers.GlobalAveragePooling2D)):
                reduce = layer
            elif reduce is not None and isinstance(layer, layers.Dense) and _activation(layer) in ("relu", "linear"):
                hidden.append(layer)
            else:
                raise UserError(f"Grad-CAM weights cannot be exported: layer {layer.name} ({type(layer).__name__}) "
                                f"after {FEATURE_MAP} is not one of pooling, Flatten, GlobalAveragePooling2D, "
                                f"Dropout, Dense (relu or linear)")
        if reduce is None or not isinstance(output_layer, layers.Dense):
            raise UserError(f"Grad-CAM weights cannot be exported: the head after {FEATURE_MAP} must flatten or pool "
                            f"the feature map and end in a Dense layer")
        return pooling, hidden, reduce, output_layer

    def call(self, feature_map):
        # Forward through the head, keeping what the derivative needs: the ReLU masks.
        x = feature_map
        for layer in self.pooling:
            x = layer(x)
        spatial = x.shape[1:]  # [h', w', K] where the head flattens or averages
        v = ops.reshape(x, (-1, int(np.prod(spatial)))) if isinstance(self.reduce, layers.Flatten) else ops.mean(x, axis=(1, 2))
        masks = []
        for layer in self.hidden:
            v = layer(v)
            masks.append(ops.cast(v > 0, v.dtype) if _activation(layer) == "relu" else None)
        # Backward, one row per class: g [N, classes, units] = d logit_c / d (the layer's input).
        kernel = self.output_layer.kernel
        g = ops.zeros_like(v)[:, None, :] + ops.transpose(kernel)[None]
        for layer, mask in zip(reversed(self.hidden), reversed(masks)):
            if mask is not None:
                g = g * mask[:, None, :]
            g = ops.matmul(g, ops.transpose(layer.kernel))
        classes = int(kernel.shape[-1])
        if isinstance(self.reduce, layers.Flatten):
            # Sum of the gradient over the positions where the head flattens.
            summed = ops.sum(ops.reshape(g, (-1, classes, spatial[0] * spatial[1], spatial[2])), axis=2)
        else:
            summed = g  # the average pooling spreads g / (h' w') over h' w' positions
        height, width = feature_map.shape[1:3]
        weights = summed / float(height * width)
        return ops.concatenate([-weights, weights], axis=1) if classes == 1 else weights

    def compute_output_shape(self, input_shape):
        classes = int(self.output_layer.units)
        return (input_shape[0], 2 if classes == 1 else classes, input_shape[-1])


def feature_map_centres(model: keras.Model) -> dict[str, dict[str, float]]:
    """Receptive-field centres of the `feature_map` positions: {"y"|"x": {"offset", "stride"}} in input pixels.

    Walks the layers up to `feature_map`: convolutions and poolings move and spread the centres,
    padding moves them, layers that keep the spatial size keep them. A nested pretrained base
    pads its convolutions ('same'), so its map covers its input evenly.
    """
    geometry = {"y": [0.5, 1.0], "x": [0.5, 1.0]}  # input pixel k: centre k + 0.5, stride 1

    def move(axis, kernel, step, pad_before):
        offset, stride = geometry[axis]
        geometry[axis] = [offset + stride * ((kernel - 1) / 2 - pad_before), stride * step]

    for layer in model.layers[1:]:
        in_shape, out_shape = tuple(layer.input.shape[1:3]), tuple(layer.output.shape[1:3])
        for a, axis in enumerate(("y", "x")):
            if isinstance(layer, keras.Model):  # 'same' padding: output i covers input [s i, s i + s)
                move(axis, in_shape[a] / out_shape[a], in_shape[a] / out_shape[a], 0)
            elif isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D) + _POOLING):
                kernel = layer.kernel_size[a] if hasattr(layer, "kernel_size") else layer.pool_size[a]
                kernel = (kernel - 1) * getattr(layer, "dilation_rate", (1, 1))[a] + 1
                step = layer.strides[a]
                pad = max((out_shape[a] - 1) * step + kernel - in_shape[a], 0) // 2 if layer.padding == "same" else 0
                move(axis, kernel, step, pad)
            elif isinstance(layer, layers.ZeroPadding2D):
                move(axis, 1, 1, layer.padding[a][0])
            elif in_shape != out_shape:
                raise UserError(f"cannot place the heatmap: layer {layer.name} ({type(layer).__name__}) changes the "
                                f"spatial size in a way Grad-CAM does not know")
        if layer.name == FEATURE_MAP:
            break
    return {axis: {"offset": offset, "stride": stride} for axis, (offset, stride) in geometry.items()}


def gradient_tape_weights(model: keras.Model, images) -> tuple[np.ndarray, np.ndarray]:
    """The feature map [N, h, w, K] and the Grad-CAM weights [N, classes, K] by automatic differentiation.

    `model`: a model whose layers include `feature_map` and the output layer `predictions`
    (a trained model's core, or the export's inference model).
    """
    import tensorflow as tf

    output_layer = model.get_layer(OUTPUT_LAYER)
    probe = keras.Model(model.inputs, [model.get_layer(FEATURE_MAP).output, output_layer.input])
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        feature_map, x = probe(images, training=False)
        logits = tf.matmul(x, output_layer.kernel) + output_layer.bias
        scores = [tf.reduce_sum(logits[:, c]) for c in range(logits.shape[-1])]  # samples are independent
    weights = tf.stack([tf.reduce_mean(tape.gradient(score, feature_map), axis=(1, 2)) for score in scores], axis=1)
    del tape
    if weights.shape[1] == 1:
        weights = tf.concat([-weights, weights], axis=1)
    return feature_map.numpy(), weights.numpy()


def keras_gradcam(model: keras.Model, images, class_index: int) -> np.ndarray:
    """Grad-CAM heatmaps [N, h, w] in [0, 1] of class `class_index`, computed with TensorFlow."""
    import tensorflow as tf

    feature_map, weights = gradient_tape_weights(model, images)
    heatmap = tf.nn.relu(tf.einsum("nhwk,nk->nhw", feature_map, weights[:, class_index]))
    peak = tf.reduce_max(heatmap, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(heatmap, peak).numpy()
