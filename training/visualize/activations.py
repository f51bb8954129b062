"""An image's intermediate activations, channel by channel, one grid per layer (Deep Learning with
Python, ch. 9, "visualizing intermediate activations")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import colour, columns_for, save_grid, tile
from .layers import LayerRef, probe

MAX_CHANNELS = 64


def deprocess(activation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[h, w, K] activations -> [K, h, w] uint8 pictures, and which channels are blank.

    As in the book: each channel standardised, times 64, plus 128, clipped to 0-255. A channel
    with the same value everywhere (typically 0 after a ReLU: its pattern is absent from the
    image) is shown black instead of dividing by zero. A 1x1 map has nothing to standardise
    within a channel: its channels are standardised together.
    """
    channels = np.moveaxis(activation.astype(np.float64), -1, 0)  # [K, h, w]
    per_channel = channels[0].size > 1
    axes = (1, 2) if per_channel else (0, 1, 2)
    mean, std = channels.mean(axis=axes, keepdims=True), channels.std(axis=axes, keepdims=True)
    blank = channels.std(axis=(1, 2)) < 1e-12 if per_channel else np.zeros(len(channels), bool)
    pictures = (channels - mean) / np.maximum(std, 1e-12) * 64 + 128
    pictures[blank] = 0
    return np.clip(pictures, 0, 255).astype(np.uint8), blank


def chosen_channels(activation: np.ndarray) -> np.ndarray:
    """All channels, or the MAX_CHANNELS most active ones (highest mean), in channel order."""
    count = activation.shape[-1]
    if count <= MAX_CHANNELS:
        return np.arange(count)
    return np.sort(np.argsort(-activation.mean(axis=(0, 1)), kind="stable")[:MAX_CHANNELS])


def title_of(ref: LayerRef, activation: np.ndarray, shown: int, blank: int, feature_map: bool) -> str:
    h, w, k = activation.shape
    which = f"{k} channels" if shown == k else f"the {shown} most active of {k} channels"
    note = f", {blank} blank" if blank else ""
    return f"{ref.title}{' (feature_map)' if feature_map else ''}: {h}x{w}, {which}{note}"


def write_activation_grids(core, image: np.ndarray, refs: list[LayerRef], folder: Path, feature_map: LayerRef) -> list[Path]:
    """One grid PNG per layer in `refs` for one image [H, W, C] (float32 0-255); returns the paths."""
    outputs = probe(core, refs)(image[None], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    paths = []
    for number, (ref, activation) in enumerate(zip(refs, outputs), start=1):
        activation = np.asarray(activation)[0]
        channels = chosen_channels(activation)
        pictures, blank = deprocess(activation[..., channels])
        path = folder / f"{number:02d}_{ref.file_stem}.png"
        title = title_of(ref, activation, len(channels), int(blank.sum()), ref == feature_map)
        save_grid(tile(colour(pictures), columns_for(len(channels))), path, title)
        paths.append(path)
    return paths
