"""Deployment: the bento and the Dockerfile's steps, as far as they run without Docker.

In a copy of the checkout's service files: generate the requirements from pyproject.toml,
`bentoml build`, `bentoml export` to the tar the Dockerfile unpacks, run the Dockerfile's install
step against the bento's requirements (a dry run, offline), and serve the unpacked bento from an
empty directory with an empty BentoML home: it carries its code and models itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement

from service.dependencies import serving_requirements
from loadtests.servers import REPO, serve_env, serving
from tests.service_helpers import GRAY_MODEL, JPEG_SAMPLE, RGB_MODEL, register

DOCKERFILE = (REPO / "Dockerfile").read_text()


def run(*command: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    """The exported bento, unpacked as the Dockerfile's ADD unpacks it."""
    tmp = tmp_path_factory.mktemp("bento-build")
    home = tmp / "bentoml-home"
    register(RGB_MODEL, home)
    register(GRAY_MODEL, home)
    context = tmp / "checkout"  # what bentoml build needs of a checkout, and nothing else
    shutil.copytree(REPO / "service", context / "service", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("bentofile.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, context)
    env = serve_env(home, SERVICE_MODELS=f"{RGB_MODEL.name},{GRAY_MODEL.name}")
    run(sys.executable, "-m", "service.dependencies", "build/requirements-serve.txt", cwd=context, env=env)
    run(sys.executable, "-m", "bentoml", "build", "-q", str(context), cwd=context, env=env)
    archive = context / "build" / "bento.tar"
    run(sys.executable, "-m", "bentoml", "export", "image_classifier:latest", str(archive), "-q", cwd=context, env=env)
    unpacked = tmp / "bento"
    with tarfile.open(archive) as tar:
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


def test_dockerfiles_install_step_resolves_the_bentos_requirements_offline(bento):
    # The Dockerfile installs exactly the bento's requirements file...
    assert "COPY --from=bento /bento/env/python/requirements.txt /tmp/requirements.txt" in DOCKERFILE
    assert re.search(r"^RUN pip install -r /tmp/requirements.txt", DOCKERFILE, re.M)
    # ...which pip resolves, here without an index: what is installed satisfies every line.
    run(sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r", "requirements.txt",
        cwd=bento / "env/python", env=serve_env(bento))


def test_dockerfile_matches_onnxruntimes_cuda_and_runs_as_a_healthchecked_user():
    from onnxruntime.capi import build_and_package_info

    base = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-\S+$", DOCKERFILE, re.M)
    assert base, "the GPU image starts from an nvidia/cuda cuDNN runtime image"
    cuda = getattr(build_and_package_info, "cuda_version", None)
    if cuda:  # the GPU build of ONNX Runtime: the image's CUDA major version must be its own
        assert base.group(1) == cuda.split(".")[0], f"onnxruntime-gpu needs CUDA {cuda}, the image has {base.group(1)}"
    assert re.search(r"^USER bentoml$", DOCKERFILE, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", DOCKERFILE, re.M)
    assert re.search(r"^EXPOSE 3000$", DOCKERFILE, re.M)
    assert "build/bento.tar" in (REPO / ".dockerignore").read_text()


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
