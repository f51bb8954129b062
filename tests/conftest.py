"""Shared fixtures: tiny generated datasets, tiny trained models of every recipe, and their exports.

Everything is built once per test session in one temporary folder, offline. KERAS_HOME and
BENTOML_HOME point into that folder before TensorFlow or BentoML is imported, so no test reads a
user's cached weights or registered models, and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SESSION_DIR = Path(tempfile.mkdtemp(prefix="convnet-tests-"))
os.environ["KERAS_HOME"] = str(SESSION_DIR / "keras")
os.environ["BENTOML_HOME"] = str(SESSION_DIR / "bentoml")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from training.demo_data import generate_demo_dataset  # noqa: E402

# Sizes small enough for 2 CPU cores: the scratch convnet needs at least 78 pixels, MobileNetV2 32.
SCRATCH_SIZE = (80, 80)
TRANSFER_SIZE = (48, 48)
# The fast tier (`make test-fast`: pytest -m "not system and not slow") trains no model beyond a few
# steps and starts no server. A test that uses one of these fixtures (the tiny models of every recipe,
# a live server, a bento) is in the full tier only, as is a test marked `slow` itself.
SLOW_FIXTURES = {"trained_models", "exported_models", "server", "bento", "located_model", "observed", "image", "peer_python"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _remove_session_dir():
    yield
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture
def offline(monkeypatch):
    """No network, whether the machine has one or not: every host name lookup fails as it does
    offline, so a download raises what it raises there (urllib's URLError(gaierror), which
    keras.utils.get_file turns into "URL fetch failure")."""
    import socket

    def no_lookup(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)


@pytest.fixture(scope="session")
def binary_data() -> Path:
    """Two classes (circles, squares): the one-unit sigmoid path."""
    return generate_demo_dataset(SESSION_DIR / "data-binary", classes=("circles", "squares"),
                                 per_class={"train": 10, "validation": 4, "test": 6}, size_range=(60, 100))


@pytest.fixture(scope="session")
def multiclass_data() -> Path:
    """Three classes: the softmax path."""
    return generate_demo_dataset(SESSION_DIR / "data-multiclass", per_class={"train": 8, "validation": 3, "test": 4},
                                 size_range=(40, 70))


def write_mnist_like(path: Path, train: int = 20, test: int = 5, seed: int = 0) -> Path:
    """An .npz in keras.datasets.mnist's format with digits drawn in Pillow's default font."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default()

    def digits(count):
        images, labels = [], []
        for i in range(count * 10):
            digit = i % 10
            img = Image.new("L", (28, 28))
            ImageDraw.Draw(img).text((8 + rng.integers(-3, 4), 6 + rng.integers(-3, 4)), str(digit), fill=255, font=font)
            images.append(np.asarray(img))
            labels.append(digit)
        return np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.uint8)

    x_train, y_train = digits(train)
    x_test, y_test = digits(test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    return write_mnist_like(SESSION_DIR / "mnist.npz")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = SESSION_DIR / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def trained_models(models_dir, binary_data, multiclass_data, mnist_npz) -> dict[str, Path]:
    """One tiny model of every recipe (1-2 epochs), by name -> model folder.

    scratch, augmented, transfer and finetuned are the service's default four (binary data);
    mnist is grayscale; basenet and transfer-features are three-class softmax models.
    """
    from training.config import resolve
    from training.train import train

    runs = [
        ("scratch", "scratch", binary_data, {"image_size": SCRATCH_SIZE, "epochs": 2}),
        ("augmented", "augmented", binary_data, {"image_size": SCRATCH_SIZE, "epochs": 1}),
        ("transfer", "transfer", binary_data, {"image_size": TRANSFER_SIZE, "epochs": 1, "base_weights": "none"}),
        ("finetuned", "finetune", binary_data, {"image_size": TRANSFER_SIZE, "epochs": 1}),
        ("mnist", "mnist", mnist_npz, {"epochs": 1}),
        ("basenet", "basenet", multiclass_data, {"epochs": 1}),
        ("transfer-features", "transfer", multiclass_data,
         {"image_size": TRANSFER_SIZE, "epochs": 2, "base_weights": "none", "transfer_mode": "features"}),
    ]
    dirs = {}
    for name, recipe, data, options in runs:
        source = models_dir / "transfer" if recipe == "finetune" else None
        train(recipe, resolve(recipe, **options), data=data, name=name, models_dir=models_dir, source=source)
        dirs[name] = models_dir / name
    return dirs


@pytest.fixture(scope="session")
def exported_models(trained_models) -> dict[str, dict]:
    """Every tiny model exported (SavedModel + ONNX) and registered in the session's BENTOML_HOME.

    name -> manifest; `manifest["registered"][-1]["tag"]` is the BentoML tag.
    """
    from training.export import export_model

    return {name: export_model(path) for name, path in trained_models.items()}
