"""What each filter responds to most: gradient ascent in input space from a noisy grey image
(Deep Learning with Python, ch. 9, `generate_pattern` and `deprocess_image`).

For a filter, the loss is its mean activation (leaving out a border of 2 positions, as the book
does, when the map is large enough to keep something); the image climbs the loss's gradient,
normalised to an RMS of 1 per image, in plain pixel units (the models take pixels 0-255).
Speed: all the filters of a layer climb together, one image each, in one batch; and the images
are small, PATTERN_SIZE pixels (or the smallest size the layer accepts, at most the model's),
since a filter's pattern is a texture that repeats over any larger image.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .figures import columns_for, save_grid, tile
from .layers import LayerRef, channels, probe

MAX_FILTERS = 64
PATTERN_SIZE = 48
STEPS = 30
STEP_SIZE = 2.0


def pattern_model(core, ref: LayerRef):
    """The probe to the layer on the smallest square inputs of at least PATTERN_SIZE it accepts."""
    height, width, depth = core.input.shape[1:]
    for size in range(min(PATTERN_SIZE, height, width), max(height, width) + 1, 8):
        try:
            return probe(core, [ref], (min(size, height), min(size, width), depth))
        except ValueError:  # the layer's output would be empty: a larger image
            continue
    return probe(core, [ref])


def climb(model, filters: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images [filters, H, W, C] (float, pixel units), image i maximising filter i's mean activation,
    and which filters responded at all (a filter silent on the start image gets no gradient)."""
    import tensorflow as tf

    shape = (filters, *model.input.shape[1:])
    # The book's start: a grey image with a little noise, 128-148 in pixel values.
    start = np.random.default_rng(seed).random(shape, dtype=np.float32) * 20 + 128
    select = tf.one_hot(tf.range(filters), model.output.shape[-1])

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            activation = model(images, training=False)
            if activation.shape[1] > 4 and activation.shape[2] > 4:
                activation = activation[:, 2:-2, 2:-2]
            loss = tf.reduce_sum(tf.reduce_mean(activation, axis=(1, 2)) * select)
        grads = tape.gradient(loss, images)
        grads /= tf.sqrt(tf.reduce_mean(tf.square(grads), axis=(1, 2, 3), keepdims=True)) + 1e-5
        return images + STEP_SIZE * grads

    images = tf.constant(start)
    for _ in range(steps):
        images = step(images)
    images = images.numpy()
    return images, np.abs(images - start).max(axis=(1, 2, 3)) > 0


def deprocess(image: np.ndarray, responded: bool = True) -> np.ndarray:
    """The book's deprocess_image: standardise, std 0.1 around 0.5, clip, 0-255 uint8; RGB out.
    The start image of a filter that did not respond is shown plain grey, not as noise."""
    if not responded:
        return np.full((*image.shape[:2], 3), 128, np.uint8)
    x = image - image.mean()
    x /= x.std() + 1e-5
    x = np.clip(x * 0.1 + 0.5, 0, 1) * 255
    x = x.astype(np.uint8)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def write_pattern_grids(core, refs: list[LayerRef], folder: Path, steps: int = STEPS) -> tuple[list[Path], list[Path]]:
    """One grid PNG of filter patterns per layer in `refs`, and those of them in which no filter
    responded (all grey: e.g. deep layers of a base with random weights); prints a line per layer."""
    paths, silent_grids = [], []
    for number, ref in enumerate(refs, start=1):
        start = time.perf_counter()
        total = channels(core, ref)
        filters = min(total, MAX_FILTERS)
        model = pattern_model(core, ref)
        size = "x".join(str(d) for d in model.input.shape[1:3])
        print(f"  filter patterns [{number}/{len(refs)}] {ref.title}: {filters} filters, {steps} steps on {size} images ...",
              end="", flush=True)
        images, responded = climb(model, filters, steps)
        patterns = np.stack([deprocess(image, ok) for image, ok in zip(images, responded)])
        which = f"{filters} filters" if filters == total else f"filters 1-{filters} of {total}"
        silent = f"; {filters - responded.sum()} silent (grey)" if not responded.all() else ""
        path = folder / f"{number:02d}_{ref.file_stem}.png"
        save_grid(tile(patterns, columns_for(filters)), path, f"{ref.title}: {which}, {size} pixels, {steps} steps{silent}")
        paths.append(path)
        if not responded.any():
            silent_grids.append(path)
        print(f" {time.perf_counter() - start:.1f} s{silent.replace(' (grey)', '')}", file=sys.stdout, flush=True)
    return paths, silent_grids
