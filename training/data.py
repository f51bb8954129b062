"""Loading the data: image folders (the layout of the book's cats_vs_dogs_small) and MNIST.

An image folder is `DIR/train/<class>/*`, optionally `DIR/validation/<class>/*` (otherwise a
stratified, seeded split of train) and `DIR/test/<class>/*`. Loading follows
`keras.utils.image_dataset_from_directory` step for step (classes in alphanumeric order, files
in `os.walk` order, `tf.io.decode_image`, `tf.image.resize` bilinear), and adds what it lacks:
files that are not readable images are skipped with a warning and a count instead of stopping
training half-way, and the EXIF orientation tag is applied, as the service applies it.
`tests/test_data.py` checks that the tensors equal `image_dataset_from_directory`'s.

Images are decoded batch by batch by tf.data (cached in memory when they fit), never all at once.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError

# The formats image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SPLITS = ("train", "validation", "test")
EXIF_ORIENTATION = 0x0112
# Above this many bytes of decoded training + validation images, cache on disk instead of memory.
MEMORY_CACHE_LIMIT = 4 << 30


@dataclass
class Split:
    """The files of one split, in loading order, with integer labels and EXIF orientations."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    orientations: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "Split":
        return Split([self.paths[i] for i in indices], [self.labels[i] for i in indices], [self.orientations[i] for i in indices])


@dataclass
class ImageFolder:
    """A scanned image folder: what every split holds, and what was skipped."""

    root: Path
    classes: list[str]
    splits: dict[str, Split]
    validation_source: str
    skipped: dict[str, list[str]]

    def sizes(self) -> dict[str, int]:
        return {name: len(self.splits[name]) if name in self.splits else 0 for name in SPLITS}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _inspect_image(path: str) -> int | None:
    """The file's EXIF orientation (1-8) if Pillow can decode it completely, else None."""
    try:
        with Image.open(path) as img:
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # any decoding failure means "not a usable image"  # noqa: BLE001
        return None
    return orientation if orientation in range(1, 9) else 1


def _scan_split(folder: Path, classes: list[str], workers: int) -> tuple[Split, list[str]]:
    candidates: list[tuple[str, int]] = []
    skipped: list[str] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        for dirpath, dirnames, filenames in sorted(os.walk(class_dir)):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue  # .DS_Store and friends are not data
                path = os.path.join(dirpath, filename)
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    candidates.append((path, label))
                else:
                    skipped.append(path)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        orientations = list(pool.map(_inspect_image, [path for path, _ in candidates]))
    split = Split()
    for (path, label), orientation in zip(candidates, orientations):
        if orientation is None:
            skipped.append(path)
        else:
            split.paths.append(path)
            split.labels.append(label)
            split.orientations.append(orientation)
    for label, name in enumerate(classes):
        if label not in split.labels:
            raise UserError(f"{folder / name} holds no readable images")
    return split, skipped


def holdout(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to keep and to hold out: `fraction` of every class, chosen with `seed`, in order."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(1, round(len(members) * fraction)), len(members) - 1)
        held[rng.permutation(members)[:count]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


NO_VALIDATION = "none: every training image is trained on, the last epoch is kept"


def held_out(fraction: float, seed: int) -> str:
    """How a validation split held out of train by `holdout` is recorded (the manifest's validation_source)."""
    return f"{fraction:g} of train, stratified, seed {seed}"


def check_validation_split(fraction: float, why: str) -> None:
    """0 means no validation split (train on everything, keep the last epoch, as the seed's MNIST run does)."""
    if not 0 <= fraction < 1:
        raise UserError(f"{why}, and --validation-split {fraction:g} is not a fraction from 0 (none) to below 1")


def scan_image_folder(root: str | Path, *, validation_split: float = 0.2, seed: int = 1337) -> ImageFolder:
    """Check an image folder and list its files, or raise UserError saying what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise UserError(f"{root} has no train/ folder: expected {root}/train/<class>/<image files>")
    classes = class_folders(train_dir)
    if not classes:
        raise UserError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image files>")
    if len(classes) < 2:
        raise UserError(f"{train_dir} has only one class ({classes[0]}): a classifier needs at least two")
    for split_name in SPLITS[1:]:
        split_dir = root / split_name
        if split_dir.is_dir() and class_folders(split_dir) != classes:
            other = class_folders(split_dir)
            missing = sorted(set(classes) - set(other))
            extra = sorted(set(other) - set(classes))
            raise UserError(
                f"class folders differ between train and {split_name}: "
                f"missing in {split_name}: {missing or 'none'}; not in train: {extra or 'none'}"
            )

    workers = min(8, (os.cpu_count() or 1) * 2)
    splits: dict[str, Split] = {}
    skipped: dict[str, list[str]] = {}
    for split_name in SPLITS:
        split_dir = root / split_name
        if split_dir.is_dir():
            splits[split_name], skipped[split_name] = _scan_split(split_dir, classes, workers)
            if skipped[split_name]:
                _warn(
                    f"skipped {len(skipped[split_name])} file(s) in {split_dir} that are not readable images "
                    f"(first: {skipped[split_name][0]})"
                )

    if "validation" in splits:
        validation_source = "folder"
    else:
        check_validation_split(validation_split, f"{root} has no validation/ folder")
        validation_source = NO_VALIDATION
        if validation_split:
            keep, held = holdout(splits["train"].labels, validation_split, seed)
            splits["train"], splits["validation"] = splits["train"].subset(keep), splits["train"].subset(held)
            validation_source = held_out(validation_split, seed)
    return ImageFolder(root, classes, splits, validation_source, skipped)


def load_mnist(path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST as uint8 arrays (N, 28, 28, 1): from `path` (an .npz like Keras') or keras.datasets."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"MNIST file {path} does not exist")
        try:
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (KeyError, ValueError, OSError) as err:
            raise UserError(f"{path} is not an MNIST .npz (arrays x_train, y_train, x_test, y_test): {err}") from None
        train = (arrays["x_train"], arrays["y_train"])
        test = (arrays["x_test"], arrays["y_test"])
    else:
        import keras

        try:
            train, test = keras.datasets.mnist.load_data()
        except Exception as err:  # download failures come as several exception types
            raise UserError(
                "MNIST is not cached in ~/.keras/datasets/mnist.npz and could not be downloaded "
                f"({type(err).__name__}); pass the path of an mnist.npz (train mnist --data, reproduce --mnist)"
            ) from None
    return {"train": (train[0][..., None], train[1].astype(np.int64)), "test": (test[0][..., None], test[1].astype(np.int64))}


# --- tf.data pipelines -------------------------------------------------------------------------


def _orient(image, orientation):
    """Apply an EXIF orientation (1-8) to a decoded HWC image, as PIL.ImageOps.exif_transpose does."""
    import tensorflow as tf

    def transpose(x):
        return tf.transpose(x, (1, 0, 2))

    branches = [
        lambda: image,  # 0: unused
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: transpose(image),  # 5: transpose
        lambda: tf.image.rot90(image, 3),  # 6: rotate 90 clockwise (PIL ROTATE_270)
        lambda: tf.image.rot90(transpose(image), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: rotate 90 counter-clockwise (PIL ROTATE_90)
    ]
    return tf.switch_case(tf.convert_to_tensor(orientation, tf.int32), branches)


def load_image(path, orientation, image_size: tuple[int, int], channels: int):
    """Read, decode, orient and resize one image file: float32 0-255, HWC."""
    import tensorflow as tf

    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    image = _orient(image, orientation)
    image = tf.image.resize(image, image_size, method="bilinear")
    image.set_shape((*image_size, channels))
    return image


def _label_tensor(labels: np.ndarray, num_classes: int) -> np.ndarray:
    # A one-unit sigmoid model wants float labels of shape (N, 1); softmax models want integers.
    if num_classes == 2:
        return labels.astype(np.float32)[:, None]
    return labels.astype(np.int64)


def _finish(ds, *, batch_size: int, shuffle: bool, seed: int, size: int, cache: str | None):
    import tensorflow as tf

    if cache is not None:
        ds = ds.cache(cache)
    if shuffle:
        ds = ds.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def folder_dataset(split: Split, *, image_size, channels: int, num_classes: int, batch_size: int,
                   shuffle: bool = False, seed: int = 1337, cache: str | None = ""):
    """A batched tf.data.Dataset of (image, label) from a scanned split.

    `cache`: "" caches decoded images in memory, a path caches them in files there, None not at all.
    """
    import tensorflow as tf

    labels = _label_tensor(np.asarray(split.labels), num_classes)
    ds = tf.data.Dataset.from_tensor_slices((split.paths, split.orientations, labels))
    ds = ds.map(
        lambda path, orientation, label: (load_image(path, orientation, tuple(image_size), channels), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return _finish(ds, batch_size=batch_size, shuffle=shuffle, seed=seed, size=len(split), cache=cache)


def array_dataset(images: np.ndarray, labels: np.ndarray, *, num_classes: int, batch_size: int,
                  shuffle: bool = False, seed: int = 1337):
    """A batched tf.data.Dataset from uint8 arrays (MNIST); converted to float32 batch by batch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, _label_tensor(labels, num_classes)))
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds, batch_size=batch_size, shuffle=shuffle, seed=seed, size=len(images), cache=None)


def cache_setting(total_images: int, image_size, channels: int, cache_dir: Path) -> str:
    """In memory when the decoded images fit comfortably, else on disk under `cache_dir`."""
    decoded_bytes = total_images * image_size[0] * image_size[1] * channels * 4
    if decoded_bytes <= MEMORY_CACHE_LIMIT:
        return ""
    cache_dir.mkdir(parents=True, exist_ok=True)
    return str(cache_dir)


# --- everything a training run needs -----------------------------------------------------------


@dataclass
class Datasets:
    """The batched train/validation/test datasets of a run, and the manifest's `dataset` record.
    `validation` is None when the run trains on every image (--validation-split 0)."""

    classes: list[str]
    train: object
    validation: object | None
    test: object | None
    info: dict


def load_datasets(data: str | Path | None, hp, *, mnist: bool, cache_dir: Path) -> Datasets:
    """Scan and load the data of a run (`hp`: the run's Hyperparameters): MNIST's arrays, or an image folder."""
    return mnist_datasets(data, hp) if mnist else folder_datasets(data, hp, cache_dir=cache_dir)


def mnist_datasets(data: str | Path | None, hp) -> Datasets:
    """MNIST (`data`: an .npz, or None for keras.datasets.mnist), with `hp.validation_split` of train held out."""
    if tuple(hp.image_size) != (28, 28) or hp.color_mode != "grayscale":
        raise UserError("the mnist recipe takes 28x28 grayscale images: leave --image-size and --color-mode unset")
    check_validation_split(hp.validation_split, "MNIST has no validation split")
    arrays = load_mnist(data)
    x, y = arrays["train"]
    if hp.validation_split:
        keep, held = holdout(y, hp.validation_split, hp.seed)
        source = held_out(hp.validation_split, hp.seed)
    else:
        keep, held, source = np.arange(len(y)), np.arange(0), NO_VALIDATION

    def make(images, labels, shuffle=False):
        return array_dataset(images, labels, num_classes=10, shuffle=shuffle, batch_size=hp.batch_size, seed=hp.seed)

    sizes = {"train": len(keep), "validation": len(held), "test": len(arrays["test"][0])}
    return Datasets(
        [str(digit) for digit in range(10)],
        make(x[keep], y[keep], shuffle=True),
        make(x[held], y[held]) if len(held) else None,
        make(*arrays["test"]),
        {"kind": "mnist", "path": str(Path(data).resolve()) if data else "keras.datasets.mnist", "sizes": sizes,
         "validation_source": source, "skipped_files": 0},
    )


def folder_datasets(data: str | Path | None, hp, *, cache_dir: Path) -> Datasets:
    """An image folder's splits, decoded images cached in memory, or under `cache_dir` when they do not fit."""
    if data is None:
        raise UserError("give the data folder with --data DIR (or use --demo)")
    folder = scan_image_folder(data, validation_split=hp.validation_split, seed=hp.seed)
    channels = hp.input_shape[2]
    sizes = folder.sizes()
    cache = cache_setting(sizes["train"] + sizes["validation"], hp.image_size, channels, cache_dir)

    def make(split_name: str, shuffle: bool = False):
        split_cache = None if split_name == "test" else (cache and str(Path(cache) / split_name))
        return folder_dataset(folder.splits[split_name], image_size=hp.image_size, channels=channels,
                              num_classes=len(folder.classes), shuffle=shuffle, cache=split_cache,
                              batch_size=hp.batch_size, seed=hp.seed)

    return Datasets(
        folder.classes,
        make("train", shuffle=True),
        make("validation") if "validation" in folder.splits else None,
        make("test") if "test" in folder.splits else None,
        {"kind": "directory", "path": str(folder.root.resolve()), "sizes": sizes,
         "validation_source": folder.validation_source,
         "skipped_files": sum(len(files) for files in folder.skipped.values())},
    )
