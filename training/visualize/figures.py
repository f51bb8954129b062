"""Grids of small pictures under a title, as PNG files (matplotlib, no display needed).

Tiles are brought near TILE pixels by whole factors (small ones repeated, nearest neighbour,
large ones shrunk by averaging blocks), and the mosaic is drawn pixel for pixel: crisp squares for
the coarse maps of deep layers, no resampling blur, and PNG files that compress.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 100
TILE = 96
GAP = 2
TITLE_PIXELS = 40
WIDTH_PIXELS = 800  # every grid is as wide (the mosaics are at most 8 x 96 pixels and gaps): room for the title


def columns_for(count: int) -> int:
    """8 tiles a row (the 64 tiles at most of a grid make 8 x 8), fewer when there are fewer."""
    return min(8, count)


def scale_tiles(tiles: np.ndarray) -> np.ndarray:
    """[n, h, w, 3] uint8 -> the same tiles enlarged or shrunk by a whole factor towards TILE pixels."""
    size = max(tiles.shape[1:3])
    if size <= TILE:
        factor = TILE // size
        return tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    factor = math.ceil(size / TILE)
    n, h, w, c = tiles.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = tiles[:, :h, :w].reshape(n, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(2, 4)).round().astype(np.uint8)


def tile(tiles: np.ndarray, columns: int) -> np.ndarray:
    """[n, h, w, 3] uint8 tiles -> one RGB mosaic, row by row, white gaps between the tiles."""
    tiles = scale_tiles(tiles)
    count, height, width = tiles.shape[:3]
    rows = math.ceil(count / columns)
    mosaic = np.full((rows * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), 255, np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        y, x = row * (height + GAP), column * (width + GAP)
        mosaic[y:y + height, x:x + width] = tiles[index]
    return mosaic


def colour(values: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """uint8 values [...] -> uint8 RGB [..., 3] through a matplotlib colour map."""
    lookup = (matplotlib.colormaps[colormap](np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    return lookup[values]


def save_grid(mosaic: np.ndarray, path: Path, title: str) -> None:
    """The mosaic, pixel for pixel, centred under a title."""
    height, width = mosaic.shape[:2]
    fig_width, fig_height = max(width, WIDTH_PIXELS), height + TITLE_PIXELS
    fig = plt.figure(figsize=(fig_width / DPI, fig_height / DPI), dpi=DPI)
    left = (fig_width - width) // 2
    fig.add_axes((left / fig_width, 0, width / fig_width, height / fig_height))
    fig.axes[0].imshow(mosaic, interpolation="nearest")
    fig.axes[0].set_axis_off()
    fig.text(0.5, 1 - TITLE_PIXELS / 2 / fig_height, title, ha="center", va="center", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
