"""The recipes' architectures, which layers train, and where a base's weights come from."""

import keras
import numpy as np
import pytest

from training.bases import PreprocessInput, build_base
from training.errors import UserError
from training.recipes import (
    assemble,
    augmentation,
    build_basenet,
    build_mnist,
    build_scratch,
    build_transfer,
    core_of,
    head_on_features,
    unfreeze_top,
)


def _layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_scratch_is_the_seed_convnet():
    core = build_scratch((180, 180, 3), 2)
    convs = [layer for layer in core.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    assert _layer_types(core)[:3] == ["InputLayer", "Rescaling", "Conv2D"]
    assert core.get_layer("feature_map").output.shape[1:] == (7, 7, 256)
    assert core.output.shape[1:] == (1,) and core.get_layer("predictions").activation.__name__ == "sigmoid"
    assert core.count_params() == 991_041  # the book's figure for this network


def test_more_classes_get_softmax_and_augmented_gets_dropout():
    core = build_scratch((180, 180, 3), 5, dropout=0.5)
    assert core.output.shape[1:] == (5,) and core.get_layer("predictions").activation.__name__ == "softmax"
    assert core.get_layer("dropout").rate == 0.5


def test_augmentation_wraps_the_core_and_is_absent_from_it():
    core = build_scratch((80, 80, 3), 2)
    model = assemble(core, augment=True, seed=1, name="augmented")
    aug = model.get_layer("augmentation")
    assert [type(layer).__name__ for layer in aug.layers] == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert core_of(model) is core
    assert not any("Random" in type(layer).__name__ for layer in core.layers)


def test_augmentation_draws_each_images_flip_rotation_and_zoom_independently():
    """Given one seed, Keras' three layers drew the same random numbers: every image's flip, angle
    and zoom were one number (a large rotation always came with a large zoom and no flip)."""
    flip, rotation, zoom = augmentation(1337).layers
    images = np.zeros((512, 8, 8, 3), "float32")
    flips = np.asarray(flip.get_random_transformation(images, training=True)["flips"], dtype=float).ravel()
    angles = np.asarray(rotation.get_random_transformation(images, training=True)["angle"]).ravel()
    zooms = np.asarray(zoom.get_random_transformation(images, training=True)["height_zoom"]).ravel()
    assert 0.4 < flips.mean() < 0.6 and angles.std() > 0 and zooms.std() > 0
    for a, b in ((flips, angles), (flips, zooms), (angles, zooms)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.2
    # The same run seed gives the same augmentation (resumable, reproducible runs).
    assert [layer.seed for layer in augmentation(1337).layers] == [flip.seed, rotation.seed, zoom.seed]


def test_too_small_images_are_a_clear_error():
    with pytest.raises(UserError, match="too small for the scratch recipe"):
        build_scratch((60, 60, 3), 2)


def test_mnist_and_basenet_shapes():
    mnist = build_mnist()
    assert [layer.filters for layer in mnist.layers if isinstance(layer, keras.layers.Conv2D)] == [32, 64, 128]
    assert mnist.input.shape[1:] == (28, 28, 1) and mnist.output.shape[1:] == (10,)
    basenet = build_basenet((32, 32, 3), 4)
    convs = [layer for layer in basenet.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert basenet.get_layer("dense").units == 50 and basenet.output.shape[1:] == (4,)


def _transfer(size=48, classes=2):
    base, info = build_base("mobilenet_v2", (size, size, 3), "none")
    return build_transfer((size, size, 3), classes, base, "mobilenet_v2"), info


def test_transfer_trains_only_its_head():
    core, info = _transfer()
    assert info.weights == "random"
    trainable = sorted({w.path.split("/")[0] for w in core.trainable_weights})
    assert trainable == ["head_dense", "predictions"]
    assert not core.get_layer("base").trainable
    assert core.get_layer("head_dropout").rate == 0.5
    assert core.get_layer("features").output.shape[1:] == (1280,)


def test_finetune_unfreezes_the_last_layers_but_not_batchnorm():
    core, _ = _transfer()
    base = core.get_layer("base")
    unfrozen = unfreeze_top(core, 4)
    # MobileNetV2's last four layers: block_16_project_BN, Conv_1, Conv_1_bn, out_relu
    assert [layer.name for layer in base.layers[-4:]] == ["block_16_project_BN", "Conv_1", "Conv_1_bn", "out_relu"]
    assert unfrozen == ["Conv_1"]
    trainable = sorted({w.path.split("/")[0] for w in core.trainable_weights})
    assert trainable == ["Conv_1", "head_dense", "predictions"]
    assert all(not layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    more = unfreeze_top(core, 12)
    assert more == ["block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"]
    with pytest.raises(UserError, match="--unfreeze must be between 0 and"):
        unfreeze_top(core, 1000)


def test_feature_extraction_head_shares_weights_with_the_core():
    core, _ = _transfer(classes=3)
    head = head_on_features(core)
    assert head.input.shape[1:] == (1280,)
    features = np.random.default_rng(0).normal(size=(4, 1280)).astype("float32")
    from_core = keras.Model(core.get_layer("features").output, core.output)
    np.testing.assert_allclose(head(features), from_core(features), rtol=1e-6)


def test_preprocess_input_is_inside_the_model():
    layer = PreprocessInput("mobilenet_v2")
    x = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(layer(x), [[[[-1.0, 0.0, 1.0]]]])
    caffe = PreprocessInput("vgg16")(np.full((1, 1, 1, 3), 100.0, dtype="float32"))
    np.testing.assert_allclose(caffe, [[[[100 - 103.939, 100 - 116.779, 100 - 123.68]]]], rtol=1e-5)


def test_imagenet_offline_is_an_error_naming_the_path_option(offline):
    with pytest.raises(UserError, match="pass --base-weights PATH"):
        build_base("mobilenet_v2", (48, 48, 3), "imagenet")


def test_imagenet_offline_falls_back_to_random_when_allowed(offline, capsys):
    _, info = build_base("mobilenet_v2", (48, 48, 3), "imagenet", fallback_to_random=True)
    assert info.weights == "random" and "could not be downloaded" in info.source
    out = capsys.readouterr().out
    assert out.count("note:") == 1 and "random weights" in out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_from_a_file(tmp_path):
    base, _ = build_base("mobilenet_v2", (48, 48, 3), "none", alpha=0.35)
    path = tmp_path / "base.weights.h5"
    base.save_weights(path)
    loaded, info = build_base("mobilenet_v2", (48, 48, 3), str(path), alpha=0.35)
    assert info.weights == "file" and info.source == str(path.resolve())
    np.testing.assert_array_equal(loaded.get_layer("Conv_1").kernel, base.get_layer("Conv_1").kernel)
    with pytest.raises(UserError, match="does not exist"):
        build_base("mobilenet_v2", (48, 48, 3), str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="does not fit MobileNetV2 alpha 0.5"):
        build_base("mobilenet_v2", (48, 48, 3), str(path), alpha=0.5)


def _pretrained(tmp_path, *, nested: bool):
    """A MobileNetV2 of one's own pretraining saved as a .keras file: alone, or inside a classifier."""
    import keras

    base, _ = build_base("mobilenet_v2", (40, 40, 3), "none", alpha=0.35)
    model = base
    if nested:
        inputs = keras.Input((40, 40, 3))
        model = keras.Model(inputs, keras.layers.Dense(5, name="top")(keras.layers.GlobalAveragePooling2D()(base(inputs))))
    path = tmp_path / f"{'nested' if nested else 'alone'}.keras"
    model.save(path)
    return base, path


@pytest.mark.slow
@pytest.mark.parametrize("nested", [False, True])
def test_a_keras_model_file_of_ones_own_pretraining_gives_the_base_its_weights(tmp_path, nested):
    pretrained, path = _pretrained(tmp_path, nested=nested)
    # Another input size: a convolution's weights do not depend on it.
    loaded, info = build_base("mobilenet_v2", (48, 48, 3), str(path), alpha=0.35)
    assert info.weights == "file" and info.source == str(path.resolve())
    assert len(loaded.weights) == len(pretrained.weights)
    for mine, theirs in zip(loaded.weights, pretrained.weights):
        np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(UserError, match=r"does not fit MobileNetV2 alpha 0.5: layer '\w+' has weights of shapes"):
        build_base("mobilenet_v2", (48, 48, 3), str(path), alpha=0.5)


def test_a_keras_model_file_without_the_base_is_one_clear_error(tmp_path):
    import keras

    inputs = keras.Input((40, 40, 3))
    path = tmp_path / "other.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(path)
    with pytest.raises(UserError, match=r"other.keras holds no MobileNetV2 alpha 0.35 base: it has no layer 'Conv1'"):
        build_base("mobilenet_v2", (48, 48, 3), str(path))
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="broken.keras is not a Keras model file Keras can read"):
        build_base("mobilenet_v2", (48, 48, 3), str(tmp_path / "broken.keras"))


@pytest.mark.slow
def test_the_manifest_records_a_base_of_ones_own_pretraining_as_its_source(tmp_path, binary_data):
    from training.config import resolve
    from training.train import train

    pretrained, path = _pretrained(tmp_path, nested=True)
    manifest = train("transfer", resolve("transfer", image_size=(48, 48), epochs=1, base_weights=str(path)),
                     data=binary_data, name="own-base", models_dir=tmp_path / "models")
    assert manifest["base"]["weights"] == "file" and manifest["base"]["weights_source"] == str(path.resolve())
    assert manifest["hyperparameters"]["base_weights"] == str(path)
    import keras

    trained = keras.models.load_model(tmp_path / "models" / "own-base" / "model.keras")
    np.testing.assert_array_equal(trained.get_layer("classifier").get_layer("base").get_layer("Conv_1").kernel,
                                  pretrained.get_layer("Conv_1").kernel)  # frozen: as pretrained


def test_bad_base_options():
    with pytest.raises(UserError, match="alpha must be one of"):
        build_base("mobilenet_v2", (48, 48, 3), "none", alpha=0.4)
    with pytest.raises(UserError, match="at least 32x32"):
        build_base("mobilenet_v2", (24, 24, 3), "none")
