"""Start-up: settings from the environment, model packages from the store, ONNX Runtime sessions.

Every way a configured model can be unusable stops the service with one line naming the model;
`bentoml serve` itself is run for two of them.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service import engine, registry, settings
from service.registry import ModelError
from service.settings import ModelRef, SettingsError
import requests

from loadtests.servers import REPO, Server, process_role, serve_env
from tests.service_helpers import JPEG_SAMPLE, RGB_MODEL, gradcam_stub_onnx, register, with_gradcam

# --- settings -----------------------------------------------------------------------------------------


def test_defaults_serve_the_four_recipe_models_with_finetuned_as_default():
    config = settings.load({})
    assert config.model_names == ("scratch", "augmented", "transfer", "finetuned")
    assert config.default_model == "finetuned"
    assert config.inference_threads == 1 and config.concurrent_batches is None and not config.require_gpu and not config.jpeg_reduce
    assert config.max_batch_size >= 2 and config.max_images_per_request >= 1
    # One worker per core without a GPU (one interpreter cannot keep them busy), one with a GPU.
    assert config.workers == (1 if settings.gpu_present() else settings.cpu_count())


@pytest.mark.parametrize("files,cores", [
    ({"cpu.max": "150000 100000\n"}, 2),            # cgroup v2, 1.5 cores: rounded up
    ({"cpu.max": "max 100000\n"}, None),            # v2, no limit: the affinity mask
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),
])
def test_a_cpu_quota_narrows_the_cores_the_defaults_are_made_for(tmp_path, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert settings.cpu_count(str(tmp_path)) == (min(cores, affinity) if cores else affinity)


def test_settings_are_read_from_the_environment():
    config = settings.load({"SERVICE_MODELS": "mnist, cats:v2", "SERVICE_MAX_BATCH_SIZE": "64", "REQUIRE_GPU": "1",
                            "SERVICE_INFERENCE_THREADS": "3", "SERVICE_WORKERS": "4", "SERVICE_CONCURRENT_BATCHES": "2"})
    assert config.models == (ModelRef("mnist"), ModelRef("cats", "v2"))
    assert config.models[1].tag == "cats:v2" and config.models[0].tag == "mnist:latest"
    assert config.default_model == "mnist"  # finetuned is not served: the first one is the default
    assert (config.max_batch_size, config.require_gpu, config.inference_threads, config.workers) == (64, True, 3, 4)
    assert config.concurrent_batches == 2


@pytest.mark.parametrize("environ,named", [
    ({"SERVICE_MAX_BATCH_SIZE": "1"}, "SERVICE_MAX_BATCH_SIZE"),
    ({"SERVICE_MAX_IMAGE_PIXELS": "many"}, "SERVICE_MAX_IMAGE_PIXELS"),
    ({"REQUIRE_GPU": "maybe"}, "REQUIRE_GPU"),
    ({"SERVICE_MODELS": "a,b,a"}, "SERVICE_MODELS"),
    ({"SERVICE_WORKERS": "0"}, "SERVICE_WORKERS"),
    ({"SERVICE_CONCURRENT_BATCHES": "two"}, "SERVICE_CONCURRENT_BATCHES"),
    ({"SERVICE_INFERENCE_THREADS": "0"}, "SERVICE_INFERENCE_THREADS"),
    ({"SERVICE_MODELS": "Cats&Dogs"}, "SERVICE_MODELS"),
    ({"SERVICE_MODELS": "a,b", "SERVICE_DEFAULT_MODEL": "c"}, "SERVICE_DEFAULT_MODEL"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(environ, named):
    with pytest.raises(SettingsError) as caught:
        settings.load(environ)
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_describe_lists_every_variable():
    text = settings.describe({"SERVICE_WORKERS": "3"})
    for name in settings.VARIABLES:
        assert name in text
    assert "'3' (set)" in text


# --- model packages -------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path):
    """A model store of its own for this process (BentoML's container, overridden as it allows)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    BentoMLContainer.model_store.set(ModelStore(tmp_path / "models"))
    yield tmp_path
    BentoMLContainer.model_store.reset()


def stored_path(home: Path, name: str) -> Path:
    return next(p for p in (home / "models" / name).iterdir() if p.is_dir())


def open_and_check(name: str) -> registry.ModelPackage:
    package = registry.open_package(ModelRef(name))
    engine.check(package)
    return package


def test_a_good_package_opens(home):
    register(RGB_MODEL, home)
    package = open_and_check(RGB_MODEL.name)
    assert package.classes == RGB_MODEL.classes and package.input.channels == 3
    assert package.version == stored_path(home, RGB_MODEL.name).name
    summary = package.summary()
    assert summary["input"] == {"height": 24, "width": 32, "channels": 3, "color_mode": "rgb"}


def damage(home: Path, how: str) -> str:
    """Register a copy of the RGB model named after `how`, damaged that way; its name."""
    name = how
    model = dataclasses.replace(RGB_MODEL, name=name)
    onnx = model.onnx_bytes()
    if how == "bad-protobuf":  # a file that is not ONNX, with a manifest that vouches for it
        onnx = onnx[: len(onnx) // 2]
        register(model, home, onnx=onnx)
    elif how == "more-classes":
        register(model, home, manifest={**model.manifest(onnx), "classes": ["a", "b", "c", "d"]})
    elif how == "wrong-input-size":
        manifest = model.manifest(onnx)
        register(model, home, manifest={**manifest, "input": {**manifest["input"], "height": 30}})
    elif how in ("truncated-gradcam", "gradcam-not-onnx", "gradcam-wrong-names", "gradcam-missing"):
        gradcam = gradcam_stub_onnx()
        register(model, home, manifest=with_gradcam(model.manifest(onnx), None if how == "gradcam-not-onnx" else gradcam))
        path = stored_path(home, name) / "gradcam.onnx"
        path.write_bytes(gradcam)
        if how == "truncated-gradcam":  # as a copy cut short leaves it; the manifest has its sha256
            path.write_bytes(gradcam[: len(gradcam) // 2])
        elif how == "gradcam-not-onnx":  # an older manifest without its sha256: loading it finds out
            path.write_bytes(b"not a graph")
        elif how == "gradcam-wrong-names":
            path.write_bytes(onnx)
            manifest = json.loads((stored_path(home, name) / "manifest.json").read_text())
            del manifest["files"]["gradcam.onnx"]
            (stored_path(home, name) / "manifest.json").write_text(json.dumps(manifest))
        elif how == "gradcam-missing":
            path.unlink()
    elif how == "no-export-section":
        manifest = model.manifest(onnx)
        del manifest["export"]
        register(model, home, manifest=manifest)
    else:
        register(model, home)
        path = stored_path(home, name)
        if how == "truncated-onnx":
            (path / "model.onnx").write_bytes(onnx[:-100])
        elif how == "tampered":
            (path / "model.onnx").write_bytes(onnx[:-4] + b"\0\0\0\0")
        elif how == "no-onnx":
            (path / "model.onnx").unlink()
        elif how == "no-manifest":
            (path / "manifest.json").unlink()
        elif how == "manifest-not-json":
            (path / "manifest.json").write_text("{not json")
    return name


@pytest.mark.parametrize("how,says", [
    ("missing", "is not in the BentoML model store"),
    ("no-manifest", "has no manifest.json"),
    ("manifest-not-json", "is not valid JSON"),
    ("no-export-section", "export"),
    ("no-onnx", "is missing"),
    ("tampered", "sha256"),
    ("truncated-onnx", "corrupt or truncated"),
    ("truncated-gradcam", "gradcam.onnx is corrupt or truncated"),
    ("gradcam-not-onnx", "ONNX Runtime cannot load"),
    ("gradcam-wrong-names", "must take feature_map and give gradcam_weights"),
    ("gradcam-missing", "gradcam.onnx is missing"),
    ("bad-protobuf", "ONNX Runtime cannot load"),
    ("more-classes", "expected (1, 4)"),
    ("wrong-input-size", "inference on a 30x32x3 image fails"),
])
def test_an_unusable_model_is_one_line_naming_it(home, how, says):
    name = how if how == "missing" else damage(home, how)
    with pytest.raises(ModelError) as caught:
        open_and_check(name)
    message = str(caught.value)
    assert f"model {name}:" in message and says in message and "\n" not in message


# --- ONNX Runtime ----------------------------------------------------------------------------------


def test_engine_loads_warms_and_runs_every_model(home):
    register(RGB_MODEL, home)
    packages = {RGB_MODEL.name: open_and_check(RGB_MODEL.name)}
    models = engine.Engine(packages, threads=1, require_gpu=False)
    assert models.ready
    expected_provider = engine.CPU if engine.cuda_problem() else engine.CUDA
    assert models.providers() == {RGB_MODEL.name: expected_provider}
    images = np.random.default_rng(0).uniform(0, 255, (5, 24, 32, 3)).astype(np.float32)
    probabilities, features = models.models[RGB_MODEL.name].run(images)
    expected_probabilities, expected_features = RGB_MODEL.predict(images)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)
    np.testing.assert_allclose(features, expected_features, atol=1e-5)


@pytest.mark.skipif(engine.cuda_problem() is None, reason="CUDA works here")
def test_require_gpu_without_cuda_fails(home):
    register(RGB_MODEL, home)
    with pytest.raises(ModelError) as caught:
        engine.Engine({RGB_MODEL.name: open_and_check(RGB_MODEL.name)}, threads=1, require_gpu=True)
    assert "REQUIRE_GPU=1" in str(caught.value) and engine.cuda_problem() in str(caught.value)


# --- `bentoml serve` itself ---------------------------------------------------------------------------


def serve_until_exit(home: Path, **environ: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bentoml", "serve", "service.service:ImageClassifier", "--port", "0"],
                          cwd=REPO, env=serve_env(home, **environ), capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_bentoml_serve_stops_at_once_with_one_line(tmp_path):
    """Before any worker starts (no restart loop): a model ONNX Runtime refuses, a Grad-CAM graph
    cut short (the inference worker restarted every 10 s forever on it before), REQUIRE_GPU."""
    register(RGB_MODEL, tmp_path)
    corrupt = dataclasses.replace(RGB_MODEL, name="corrupt")
    register(corrupt, tmp_path, onnx=b"not an onnx file")
    cut = dataclasses.replace(RGB_MODEL, name="cut-gradcam")
    register(cut, tmp_path, manifest=with_gradcam(cut.manifest(cut.onnx_bytes()), gradcam_stub_onnx()))
    (stored_path(tmp_path, cut.name) / "gradcam.onnx").write_bytes(gradcam_stub_onnx()[:40])
    cases = [({"SERVICE_MODELS": f"{RGB_MODEL.name},corrupt"}, "model corrupt:"),
             ({"SERVICE_MODELS": f"{RGB_MODEL.name},{cut.name}"}, "gradcam.onnx is corrupt or truncated")]
    if engine.cuda_problem() is not None:
        cases.append(({"SERVICE_MODELS": RGB_MODEL.name, "REQUIRE_GPU": "1"}, "REQUIRE_GPU=1 but"))
    for environ, names in cases:
        start = time.monotonic()
        result = serve_until_exit(tmp_path, **environ)
        assert time.monotonic() - start < 60  # seconds of imports, then the check: no worker ever starts
        assert result.returncode == 1
        output = (result.stdout + result.stderr).strip().splitlines()
        assert output[-1].startswith("error: cannot start: ") and names in output[-1], output
        assert not any("Traceback" in line for line in output)


@pytest.mark.slow
def test_not_ready_until_every_model_is_loaded_and_warmed(tmp_path):
    """/readyz answers 503 at once, /livez 200 and requests 503 `unavailable` while the worker loads
    and warms its models; 200 once every model is.

    To hold its start-up where it is, deterministically: the package names a Grad-CAM graph, a
    FIFO whose opening blocks until this test writes the graph into it. `bentoml serve`'s own
    process opens it first (its check of every graph, before any worker starts); then the
    worker's engine does (after the model's own session and warm-up): it is held there."""
    register(RGB_MODEL, tmp_path, manifest=with_gradcam(RGB_MODEL.manifest(RGB_MODEL.onnx_bytes())))
    gradcam = stored_path(tmp_path, RGB_MODEL.name) / "gradcam.onnx"
    os.mkfifo(gradcam)
    server = Server.bentoml("service.service:ImageClassifier", serve_env(tmp_path, SERVICE_MODELS=RGB_MODEL.name),
                            tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120

        def reader_of_fifo() -> int:  # a writing end, once a process opens the FIFO to read it
            while True:
                assert time.monotonic() < deadline and server.process.poll() is None, server.log()
                try:
                    return os.open(gradcam, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as err:
                    assert err.errno == errno.ENXIO, err  # no reader yet
                    time.sleep(0.1)

        # First `bentoml serve`'s own process checks every graph of the package before any worker starts ...
        writer = reader_of_fifo()
        os.set_blocking(writer, True)
        os.write(writer, gradcam_stub_onnx())
        os.close(writer)
        while not any(process_role(p.cmdline()).startswith("worker") for p in server.processes()):
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()
            time.sleep(0.1)
        # ... then the worker's engine opens it: it is held there.
        writer, answers = reader_of_fifo(), []
        while len(answers) < 3:
            try:
                answers.append(requests.get(server.url + "/readyz", timeout=2).status_code)
            except requests.ConnectionError:  # not listening yet
                time.sleep(0.2)
            assert time.monotonic() < deadline, server.log()
        assert answers == [503] * 3, answers
        assert requests.get(server.url + "/livez", timeout=2).status_code == 200  # up, though not ready
        refused = requests.post(server.url + "/classify", files=[("images", ("a.jpg", JPEG_SAMPLE, "image/jpeg"))], timeout=2)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
        assert refused.json()["detail"][0]["type"] == "unavailable"
        os.set_blocking(writer, True)
        os.write(writer, gradcam_stub_onnx())
        os.close(writer)
        server.wait_ready()  # and now it is ready
    finally:
        server.stop()


def test_readme_documents_every_setting():
    from service.settings import VARIABLES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, (default, _) in VARIABLES.items():
        assert f"`{name}`" in readme, name
