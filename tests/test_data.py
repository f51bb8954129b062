"""Loading image folders: what is read, what is skipped, and the clear errors for bad data."""

import shutil

import numpy as np
import pytest
from PIL import Image

from training.data import folder_dataset, holdout, load_image, load_mnist, scan_image_folder
from training.demo_data import generate_demo_dataset
from training.errors import UserError


@pytest.fixture
def small(tmp_path):
    return generate_demo_dataset(tmp_path / "small", classes=("circles", "squares"),
                                 per_class={"train": 5, "validation": 2, "test": 2}, size_range=(40, 50))


def test_scan_lists_classes_and_splits(small):
    folder = scan_image_folder(small)
    assert folder.classes == ["circles", "squares"]
    assert folder.sizes() == {"train": 10, "validation": 4, "test": 4}
    assert folder.validation_source == "folder"
    assert folder.splits["train"].labels == [0] * 5 + [1] * 5


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "nowhere")


def test_no_train_folder(tmp_path):
    (tmp_path / "validation" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="has no train/ folder"):
        scan_image_folder(tmp_path)


def test_empty_train_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="has no class folders"):
        scan_image_folder(tmp_path)


def test_one_class_only(small):
    shutil.rmtree(small / "train" / "squares")
    with pytest.raises(UserError, match=r"only one class \(circles\)"):
        scan_image_folder(small)


def test_class_folders_differ_between_splits(small):
    (small / "test" / "squares").rename(small / "test" / "rectangles")
    with pytest.raises(UserError, match=r"differ between train and test.*missing in test: \['squares'\].*not in train: \['rectangles'\]"):
        scan_image_folder(small)


def test_empty_class_folder(small):
    for f in (small / "validation" / "squares").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="squares holds no readable images"):
        scan_image_folder(small)


def test_files_that_are_not_images_are_skipped_with_a_count(small, capsys):
    cats = small / "train" / "circles"
    (cats / "notes.txt").write_text("not an image")
    (cats / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = sorted(cats.glob("*.jpg"))[0].read_bytes()
    (cats / "half.jpg").write_bytes(good[: len(good) // 2])
    (cats / ".DS_Store").write_bytes(b"\0\0")
    folder = scan_image_folder(small)
    assert folder.sizes()["train"] == 10
    assert len(folder.skipped["train"]) == 3
    err = capsys.readouterr().err
    assert "skipped 3 file(s)" in err and err.count("\n") == 1


def test_validation_split_when_there_is_no_validation_folder(small):
    shutil.rmtree(small / "validation")
    folder = scan_image_folder(small, validation_split=0.4, seed=3)
    assert folder.sizes() == {"train": 6, "validation": 4, "test": 4}
    assert sorted(folder.splits["validation"].labels) == [0, 0, 1, 1]  # stratified
    assert "0.4 of train" in folder.validation_source
    again = scan_image_folder(small, validation_split=0.4, seed=3)
    assert again.splits["validation"].paths == folder.splits["validation"].paths
    with pytest.raises(UserError, match="--validation-split 1.5 is not a fraction"):
        scan_image_folder(small, validation_split=1.5)


def test_holdout_keeps_every_class_on_both_sides():
    keep, held = holdout([0] * 10 + [1] * 3, 0.2, seed=0)
    assert sorted(set(keep) | set(held)) == list(range(13))
    assert len(held) == 2 + 1


def test_loading_matches_image_dataset_from_directory(small):
    """Same classes, same decoding, same bilinear resize as keras.utils.image_dataset_from_directory."""
    import keras

    folder = scan_image_folder(small)
    ours = folder_dataset(folder.splits["test"], image_size=(37, 53), channels=3, num_classes=2, batch_size=64)
    theirs = keras.utils.image_dataset_from_directory(small / "test", image_size=(37, 53), shuffle=False, batch_size=64)
    (x1, y1), (x2, y2) = next(iter(ours)), next(iter(theirs))
    assert theirs.class_names == folder.classes
    np.testing.assert_array_equal(np.asarray(y1).ravel(), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation):
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 255, size=(6, 10, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    img.save(path, exif=exif)
    with Image.open(path) as reopened:
        expected = np.asarray(ImageOps.exif_transpose(reopened), dtype=np.float32)
    got = np.asarray(load_image(str(path), orientation, expected.shape[:2], 3))
    np.testing.assert_array_equal(got, expected)


def test_mnist_from_npz_and_clear_errors(tmp_path, mnist_npz):
    data = load_mnist(mnist_npz)
    assert data["train"][0].shape == (200, 28, 28, 1) and data["train"][0].dtype == np.uint8
    assert data["test"][1].shape == (50,)
    with pytest.raises(UserError, match="does not exist"):
        load_mnist(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros(3))
    with pytest.raises(UserError, match="is not an MNIST .npz"):
        load_mnist(bad)


def test_mnist_offline_without_cache_names_the_option(offline):
    # KERAS_HOME is an empty temporary folder in tests, and `offline` takes the network away.
    with pytest.raises(UserError, match=r"pass the path of an mnist.npz \(train mnist --data, reproduce --mnist\)"):
        load_mnist(None)
