"""Deployment: the bento and the Dockerfile's steps, as far as they run without a container engine.

In a copy of the checkout's service files: generate the requirements from pyproject.toml,
`bentoml build`, `bentoml export` to the tar the Dockerfile unpacks, check that the images'
requirements (service.dependencies, GPU and CPU) are the bento's, and serve the unpacked bento from
an empty directory with an empty BentoML home: it carries its code and models itself. The images
themselves are built and run by the system tier (tests/test_container.py).
"""

from __future__ import annotations

import re
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement

from service.dependencies import main as write_requirements, pin_installed, serving_requirements
from loadtests.servers import REPO, serve_env, serving
from tests.service_helpers import GRAY_MODEL, JPEG_SAMPLE, RGB_MODEL, export_bento

DOCKERFILE = (REPO / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    """The exported bento, unpacked as the Dockerfile's ADD unpacks it."""
    tmp = tmp_path_factory.mktemp("bento-build")
    unpacked = tmp / "bento"
    with tarfile.open(export_bento(tmp)) as tar:
        tar.extractall(unpacked, filter="data")
    return unpacked


def test_bento_holds_the_service_its_models_and_no_training_code(bento):
    for name in ("service.py", "imaging.py", "engine.py", "settings.py"):
        assert (bento / "src" / "service" / name).is_file()
    assert not (bento / "src" / "training").exists()
    for model in (RGB_MODEL, GRAY_MODEL):
        (version,) = [p for p in (bento / "models" / model.name).iterdir() if p.is_dir()]
        assert (version / "model.onnx").is_file() and (version / "manifest.json").is_file()


def test_bento_requirements_are_pyprojects_serve_extra(bento):
    lines = [line for line in (bento / "env/python/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    expected = serving_requirements()
    assert [str(Requirement(line)) for line in lines[: len(expected)]] == [str(Requirement(r)) for r in expected]
    assert all(Requirement(line).name == "bentoml" for line in lines[len(expected):])  # BentoML pins itself
    names = {Requirement(r).name for r in expected}
    assert {"bentoml", "onnxruntime-gpu", "pillow", "numpy", "prometheus-client"} <= names


def closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, as installed here."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            pending += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_serving_needs_no_tensorflow():
    installed = closure(serving_requirements())
    assert "onnxruntime-gpu" in installed or "onnxruntime" in installed
    assert not {"tensorflow", "keras", "tf2onnx", "onnx", "tensorflow-cpu"} & installed


def test_the_gpu_images_requirements_are_the_bentos_with_bentoml_pinned(bento):
    """The image installs service.dependencies' list (bentoml pinned) from its wheelhouse: the very
    requirements BentoML wrote into the bento, its own pin included."""
    lines = [line for line in (bento / "env/python/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    image = pin_installed(serving_requirements(), ["bentoml"])
    loose = [r for r in serving_requirements() if Requirement(r).name == "bentoml"]
    assert {str(Requirement(r)) for r in image} == {str(Requirement(r)) for r in lines} - {str(Requirement(r)) for r in loose}


def test_the_cpu_variant_swaps_onnxruntime_gpu_for_the_cpu_build_on_every_platform():
    gpu, cpu = serving_requirements(), serving_requirements(cpu=True)
    names = [Requirement(r).name for r in cpu]
    assert "onnxruntime-gpu" not in names and names.count("onnxruntime") == 1
    (runtime,) = [Requirement(r) for r in cpu if Requirement(r).name == "onnxruntime"]
    assert runtime.marker is None and runtime.specifier  # the bounds stay, the platform markers go
    assert [r for r in cpu if Requirement(r).name != "onnxruntime"] == \
        [r for r in gpu if Requirement(r).name not in ("onnxruntime", "onnxruntime-gpu")]


def test_dependencies_cli_writes_the_cpu_variant_pinned_and_refuses_unknown_pins(tmp_path, capsys):
    output = tmp_path / "requirements-cpu.txt"
    write_requirements(["--cpu", "--pin-installed", "bentoml", str(output)])
    lines = [line for line in output.read_text().splitlines() if not line.startswith("#")]
    assert lines == pin_installed(serving_requirements(cpu=True), ["bentoml"])
    assert f"bentoml=={metadata.version('bentoml')}" in lines
    with pytest.raises(SystemExit) as stopped:
        write_requirements(["--pin-installed", "not-a-package-here", str(output)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --pin-installed not-a-package-here: not installed here"


def test_dockerfile_installs_only_from_the_wheelhouse_of_its_bases_python():
    assert re.search(r"^ARG WHEELHOUSE=build/wheels-gpu$", DOCKERFILE, re.M)
    assert "--mount=type=bind,source=${WHEELHOUSE},target=/wheels" in DOCKERFILE
    assert "pip install --no-index --find-links /wheels -r /wheels/requirements.txt" in DOCKERFILE
    assert not re.search(r"pip install(?!.*--no-index)", DOCKERFILE)  # no other install that could reach an index
    ignored = (REPO / ".dockerignore").read_text()
    for path in ("build/bento.tar", "build/wheels-cpu/", "build/wheels-gpu/"):
        assert f"!{path}" in ignored


def test_dockerfile_matches_onnxruntimes_cuda_and_runs_as_a_healthchecked_user():
    from onnxruntime.capi import build_and_package_info

    base = re.search(r"^ARG BASE_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-\S+$", DOCKERFILE, re.M)
    assert base, "the GPU image starts from an nvidia/cuda cuDNN runtime image"
    cuda = getattr(build_and_package_info, "cuda_version", None)
    if cuda:  # the GPU build of ONNX Runtime: the image's CUDA major version must be its own
        assert base.group(1) == cuda.split(".")[0], f"onnxruntime-gpu needs CUDA {cuda}, the image has {base.group(1)}"
    assert re.search(r"^USER bentoml$", DOCKERFILE, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", DOCKERFILE, re.M)
    assert re.search(r"^EXPOSE 3000$", DOCKERFILE, re.M)


def test_the_unpacked_bento_serves_by_itself(bento, tmp_path):
    """No checkout, no model store: the bento's own code and models, its models served by default."""
    env = serve_env(tmp_path / "empty-home")
    env.pop("PYTHONPATH")
    with serving(env, tmp_path / "server.log", target=str(bento), cwd=tmp_path) as server:
        listing = requests.get(server.url + "/models", timeout=10).json()
        response = requests.post(server.url + "/classify", files=[("images", ("a.jpg", JPEG_SAMPLE))],
                                 data={"model": RGB_MODEL.name}, timeout=60)
        page = requests.get(server.url + "/ui/app.js", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/javascript")  # bentofile's include
    assert sorted(m["name"] for m in listing["models"]) == sorted([RGB_MODEL.name, GRAY_MODEL.name])
    assert response.status_code == 200, response.text
    assert response.json()[0]["label"] in RGB_MODEL.classes
