"""The service with the real exported models (tests/conftest.py trains and exports one tiny model
of every recipe), over real HTTP: no skew between training and serving.

The skew test: the same image files through Keras' own loading
(`keras.utils.image_dataset_from_directory`, what training uses) and the `.keras` model, and
through POST /classify, give the same probabilities (within 1e-3; measured: at most 6e-8).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from loadtests.images import encode
from loadtests.servers import metric_value, serve_env, serving
from tests.service_helpers import BAD_INPUT_LIMITS, BAD_REQUESTS, CLASSIFY_ONLY, batch_concurrently, check_refusal

# Every model conftest.py exports: the service's default four, grayscale MNIST, two softmax models.
MODELS = ["scratch", "augmented", "transfer", "finetuned", "mnist", "basenet", "transfer-features"]


@pytest.fixture(scope="module")
def server(exported_models, tmp_path_factory):
    """The exported models, served from the BentoML home they were registered in, at those versions,
    with the limits of the service helpers' bad-input table."""
    tags = [exported_models[name]["registered"][-1]["tag"] for name in MODELS]
    env = serve_env(Path(os.environ["BENTOML_HOME"]), SERVICE_MODELS=",".join(tags), SERVICE_MAX_IMAGES_PER_REQUEST="32",
                    **BAD_INPUT_LIMITS)
    with serving(env, tmp_path_factory.mktemp("logs") / "server.log") as running:
        yield running


def test_models_reports_each_manifest(server, exported_models):
    listing = requests.get(server.url + "/models", timeout=10).json()
    assert listing["default_model"] == "finetuned"
    by_name = {m["name"]: m for m in listing["models"]}
    assert list(by_name) == MODELS
    for name, manifest in exported_models.items():
        summary = by_name[name]
        assert summary["version"] == manifest["registered"][-1]["tag"].split(":")[1]
        assert summary["classes"] == manifest["classes"] and summary["recipe"] == manifest["recipe"]
        assert summary["test_accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"])
        assert summary["input"] == {k: manifest["input"][k] for k in ("height", "width", "channels", "color_mode")}
    assert by_name["mnist"]["input"]["color_mode"] == "grayscale"


def image_files(name: str, manifest: dict, folder: Path, data: dict[str, Path], mnist_npz: Path) -> Path:
    """A folder of test images for the model, in every format training reads."""
    folder.mkdir()
    if name == "mnist":
        digits = np.load(mnist_npz)["x_test"][:6]
        for i, digit in enumerate(digits):
            (folder / f"{i:02d}.png").write_bytes(encode(digit, "PNG"))
        colour = np.stack([digits[0], 255 - digits[0], digits[0] // 2], axis=-1)  # colour files become grayscale
        (folder / "06.jpg").write_bytes(encode(colour, "JPEG", quality=90))
        (folder / "07.png").write_bytes(encode(colour, "PNG"))
        return folder
    source = data["binary" if len(manifest["classes"]) == 2 else "multiclass"] / "test"
    photos = sorted(source.rglob("*.jpg"))[:6]
    for i, photo in enumerate(photos):  # the dataset's own JPEG files, as they are
        (folder / f"{i:02d}.jpg").write_bytes(photo.read_bytes())
    image = Image.open(photos[0]).convert("RGB")
    (folder / "10.png").write_bytes(encode(image, "PNG"))
    (folder / "11.bmp").write_bytes(encode(image, "BMP"))
    (folder / "12.gif").write_bytes(encode(image.quantize(64), "GIF"))
    (folder / "13.png").write_bytes(encode(Image.open(photos[1]).convert("RGBA"), "PNG"))
    return folder


def keras_probabilities(model_dir: Path, manifest: dict, folder: Path) -> tuple[list[str], np.ndarray]:
    """Keras' own loading of the folder, and the trained .keras model's probabilities."""
    import keras

    spec = manifest["input"]
    dataset = keras.utils.image_dataset_from_directory(
        folder, labels=None, color_mode=spec["color_mode"], image_size=(spec["height"], spec["width"]),
        shuffle=False, batch_size=64, verbose=False)
    images = np.concatenate([np.asarray(batch) for batch in dataset])
    output = np.asarray(keras.models.load_model(model_dir / "model.keras").predict(images, verbose=0))
    if output.shape[1] == 1:  # a one-unit sigmoid: the service answers [1 - p, p]
        output = np.concatenate([1 - output, output], axis=1)
    return [Path(p).name for p in dataset.file_paths], output


@pytest.mark.parametrize("name", MODELS)
def test_no_skew_between_keras_and_the_service(server, exported_models, trained_models, binary_data, multiclass_data,
                                               mnist_npz, tmp_path, record_property, name):
    manifest = exported_models[name]
    folder = image_files(name, manifest, tmp_path / "images", {"binary": binary_data, "multiclass": multiclass_data}, mnist_npz)
    files, expected = keras_probabilities(trained_models[name], manifest, folder)
    classes = manifest["classes"]
    response = requests.post(server.url + "/classify", timeout=120, data={"model": name, "top_k": str(len(classes))},
                             files=[("images", (f, (folder / f).read_bytes())) for f in files])
    assert response.status_code == 200, response.text
    served = np.array([[dict((t["label"], t["probability"]) for t in answer["top_k"])[c] for c in classes]
                       for answer in response.json()])
    assert served.shape == expected.shape
    worst = float(np.abs(served - expected).max())
    record_property("max_abs_diff_probabilities", worst)  # in the JUnit report (pytest --junitxml)
    assert worst <= 1e-3, f"{name}: probabilities differ by up to {worst:.2e}"
    assert [answer["label"] for answer in response.json()] == [classes[i] for i in expected.argmax(axis=1)]


def test_features_are_the_exported_graphs(server, exported_models, trained_models, binary_data):
    """The embedding is the inference model's `features` output (global average pooling of feature_map)."""
    import keras
    import tensorflow as tf

    from training.data import load_image
    from training.export import inference_model

    manifest = exported_models["finetuned"]
    spec = manifest["input"]
    photo = sorted((binary_data / "test").rglob("*.jpg"))[0]
    response = requests.post(server.url + "/features", data={"model": "finetuned"}, timeout=60,
                             files=[("images", (photo.name, photo.read_bytes()))])
    assert response.status_code == 200, response.text
    (answer,) = response.json()
    tensor = load_image(str(photo), tf.constant(1), (spec["height"], spec["width"]), spec["channels"])[None]
    expected = np.asarray(inference_model(keras.models.load_model(trained_models["finetuned"] / "model.keras"))(tensor)["features"])[0]
    assert answer["dim"] == len(expected) == manifest["outputs"]["features"]["shape"][1]
    np.testing.assert_allclose(answer["embedding"], expected, atol=1e-3 * max(1.0, float(np.abs(expected).max())))


def test_the_v2_protocol_answers_what_classify_and_features_answer(server, exported_models, binary_data):
    """Every exported model through tritonclient (KServe v2, binary BYTES input): its metadata from the
    manifest, and the probabilities and features /classify and /features give for the same files."""
    import tritonclient.http as triton

    photos = [photo.read_bytes() for photo in sorted((binary_data / "test").rglob("*.jpg"))[:3]]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    for name, manifest in exported_models.items():
        spec, classes = manifest["input"], manifest["classes"]
        metadata = client.get_model_metadata(name)
        assert metadata["inputs"][1]["shape"] == [-1, spec["height"], spec["width"], spec["channels"]]
        assert [output["shape"] for output in metadata["outputs"]] == [[-1, len(classes)],
                                                                       [-1, manifest["outputs"]["features"]["shape"][1]]]
        files = triton.InferInput("image_bytes", [len(photos)], "BYTES")
        files.set_data_from_numpy(np.array(photos, dtype=object))
        result = client.infer(name, [files])
        multipart = [("images", (f"{i}.jpg", data)) for i, data in enumerate(photos)]
        answers = requests.post(server.url + "/classify", files=multipart, data={"model": name, "top_k": len(classes)},
                                timeout=60).json()
        expected = [[next(item["probability"] for item in answer["top_k"] if item["label"] == label) for label in classes]
                    for answer in answers]
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6, rtol=0, err_msg=name)
        embeddings = requests.post(server.url + "/features", files=multipart, data={"model": name}, timeout=60).json()
        np.testing.assert_allclose(result.as_numpy("features"), [e["embedding"] for e in embeddings], atol=1e-6, rtol=0,
                                   err_msg=name)


def test_every_model_batches_under_concurrent_load(server, binary_data):
    photo = sorted((binary_data / "test").rglob("*.jpg"))[0].read_bytes()
    batched, _ = batch_concurrently(server, MODELS, photo)
    for model, (calls, images) in batched.items():
        assert images > calls, f"{model}: {images} images in {calls} calls, never batched"


# --- POST /explain: Grad-CAM over real HTTP ---------------------------------------------------------


def explain_request(server, image: bytes, headers=None, **fields) -> requests.Response:
    return requests.post(server.url + "/explain", files=[("images", ("x.jpg", image))], headers=headers,
                         data={k: str(v) for k, v in fields.items()}, timeout=60)


@pytest.mark.parametrize("name", ["finetuned", "scratch", "mnist", "basenet"])
def test_explain_answers_probabilities_and_a_heatmap(server, name, binary_data, multiclass_data, mnist_npz, tmp_path,
                                                     exported_models):
    import base64
    import io

    folder = image_files(name, exported_models[name], tmp_path / "images", {"binary": binary_data, "multiclass": multiclass_data}, mnist_npz)
    image = sorted(folder.iterdir())[0].read_bytes()
    classes = exported_models[name]["classes"]
    answer = explain_request(server, image, model=name)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"label", "probability", "probabilities", "explained", "heatmap_png", "model", "version"}
    assert list(body["probabilities"]) == classes and sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    classified = requests.post(server.url + "/classify", files=[("images", ("x.jpg", image))], data={"model": name}, timeout=60).json()[0]
    assert body["label"] == body["explained"] == classified["label"]
    assert body["probability"] == pytest.approx(classified["probability"], abs=1e-6)
    picture = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert picture.format == "PNG" and picture.mode == "RGB" and 256 <= max(picture.size) <= 512
    other = classes[-1] if body["label"] != classes[-1] else classes[0]
    assert explain_request(server, image, model=name, label=other).json()["explained"] == other
    for response in (explain_request(server, image, model=name, format="png"),
                     explain_request(server, image, headers={"Accept": "image/png"}, model=name)):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == picture.size


@pytest.fixture(scope="module")
def photo(binary_data) -> bytes:
    return sorted((binary_data / "test").rglob("*.jpg"))[0].read_bytes()


@pytest.mark.parametrize("name", [name for name in BAD_REQUESTS if name not in CLASSIFY_ONLY])
def test_explain_refuses_bad_input_like_every_endpoint(server, photo, name):
    """The bad-input table every image endpoint shares (tests/service_helpers.py), against the default
    model (finetuned), which can explain; the server answers the next good request."""
    check_refusal(server, "/explain", name)
    assert explain_request(server, photo).status_code == 200


def test_explain_refuses_its_own_bad_input_and_keeps_serving(server, photo):
    unknown = explain_request(server, photo, model="finetuned", label="zebras")
    assert unknown.status_code == 400 and unknown.json()["detail"][0]["type"] == "unknown_label", unknown.text
    as_json = requests.post(server.url + "/explain", json={"images": []}, timeout=60)
    assert as_json.status_code == 415 and as_json.json()["detail"][0]["type"] == "wrong_content_type"
    assert explain_request(server, photo).status_code == 200


def test_explain_counts_its_images_and_predictions(server, photo):
    """Like /classify: images processed (endpoint "explain") and the top-1 label, in either format."""
    before = requests.get(server.url + "/metrics", timeout=10).text
    labels = [explain_request(server, photo, model="scratch").json()["label"],
              explain_request(server, photo, model="scratch", label="circles").json()["label"]]
    assert explain_request(server, photo, model="scratch", format="png").status_code == 200
    assert explain_request(server, b"", model="scratch").status_code == 400  # refused: not counted
    after = requests.get(server.url + "/metrics", timeout=10).text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("imgcls_images_processed_total", model="scratch", endpoint="explain") == 3
    assert delta("imgcls_images_processed_total", model="scratch", endpoint="classify") == 0
    assert delta("imgcls_predictions_total", model="scratch") == 3
    assert labels[0] == labels[1] and delta("imgcls_predictions_total", model="scratch", label=labels[0]) == 3
