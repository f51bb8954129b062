# Two commands on a fresh machine: `make demo` and `make test`.
# Everything is installed from pyproject.toml into a virtual environment.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The benchmark's Triton peer has a venv of its own (PyTriton needs numpy < 2; .venv has numpy 2).
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp
# Demo and test runs stay on the CPU and quiet unless asked otherwise.
export TF_CPP_MIN_LOG_LEVEL ?= 3

# Container images (Dockerfile): docker where its daemon answers, else podman. Each base's Python
# version is what its wheelhouse is fetched for (the Dockerfile checks they agree).
CONTAINER_ENGINE ?= $(shell docker info > /dev/null 2>&1 && echo docker || echo podman)
GPU_PYTHON       ?= 3.12
CPU_BASE_IMAGE   ?= python:3.11-slim-bookworm
CPU_PYTHON       ?= 3.11
# podman keeps a HEALTHCHECK only in Docker's image format (docker ignores this).
export BUILDAH_FORMAT ?= docker

.PHONY: help install demo test test-fast test-system serve bento bento-export wheels-gpu wheels-cpu image image-cpu reproduce bench triton-peer locust clean

help:
	@echo "make demo   - install, then train (and export, serve) on the built-in demo dataset"
	@echo "make test   - install, then run the test suite (everything but the system tier)"
	@echo "make test-fast - the fast tier: pure functions and in-process checks, no training beyond a few steps, no server"
	@echo "make test-system - the system tier: containers, Prometheus, a browser (needs .ci/system-packages.txt installed)"
	@echo "make serve  - serve the registered models on http://localhost:3000 (SERVICE_MODELS=... picks them)"
	@echo "make bento  - build a bento (service, serving requirements, models) with bentoml build"
	@echo "make image  - the GPU image of that bento, convnet-serving:gpu (CONTAINER_ENGINE=docker|podman)"
	@echo "make image-cpu - the CPU image, convnet-serving:cpu (CPU_BASE_IMAGE=... another base; docs/deployment.md)"
	@echo "make reproduce DATA=... MNIST=... WEIGHTS=...  - the seed documents' accuracy ladder on real data (hours)"
	@echo "make bench MODEL=... IMAGES=...  - the benchmark harness (docs/benchmarks.md), reports in reports/"
	@echo "            BENCH_ARGS='--peer triton' also measures Triton Inference Server (makes its venv first)"
	@echo "make triton-peer - the venv of the benchmark's Triton peer, $(TRITON_VENV) (pyproject.toml's triton-peer extra)"
	@echo "make locust HOST=... USERS=... TIME=...  - Locust, headless, against a running service"
	@echo "make clean  - remove the virtual environment and generated demo outputs"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,serve,dev]"
	touch $(STAMP)

install: $(STAMP)

$(TRITON_STAMP): pyproject.toml
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet -e ".[triton-peer]"
	touch $(TRITON_STAMP)

triton-peer: $(TRITON_STAMP)

# BASE_WEIGHTS=path/to/weights.h5 gives the transfer rungs real ImageNet weights offline.
demo: $(STAMP)
	$(BIN)/python -m training demo $(if $(BASE_WEIGHTS),--base-weights $(BASE_WEIGHTS))

test: $(STAMP)
	$(BIN)/python -m pytest -m "not system"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not system and not slow" -q

test-system: $(STAMP)
	$(BIN)/python -m pytest -m system

serve: $(STAMP)
	$(BIN)/bentoml serve service.service:ImageClassifier

bento: $(STAMP)
	$(BIN)/python -m service.dependencies build/requirements-serve.txt
	$(BIN)/bentoml build

# The bento as the Dockerfile takes it; bentoml export needs an absolute path.
bento-export: bento
	rm -f build/bento.tar
	$(BIN)/bentoml export image_classifier:latest $(CURDIR)/build/bento.tar

# The images' Python packages, fetched here (deploy/container/wheelhouse.sh) so that the build needs
# no network; BentoML pinned to the version that builds the bento.
wheels-gpu: $(STAMP)
	$(BIN)/python -m service.dependencies --pin-installed bentoml build/requirements-gpu.txt
	PYTHON=$(BIN)/python deploy/container/wheelhouse.sh build/requirements-gpu.txt $(GPU_PYTHON) build/wheels-gpu

wheels-cpu: $(STAMP)
	$(BIN)/python -m service.dependencies --cpu --pin-installed bentoml build/requirements-cpu.txt
	PYTHON=$(BIN)/python deploy/container/wheelhouse.sh build/requirements-cpu.txt $(CPU_PYTHON) build/wheels-cpu

image: bento-export wheels-gpu
	$(CONTAINER_ENGINE) build --build-arg WHEELHOUSE=build/wheels-gpu -t convnet-serving:gpu .

image-cpu: bento-export wheels-cpu
	$(CONTAINER_ENGINE) build --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) --build-arg WHEELHOUSE=build/wheels-cpu \
		-t convnet-serving:cpu .

# The seed documents' table on real data: train + export the ladder and MNIST (hours on 2 cores;
# rungs already trained with the same options are reused), then measure them through the service.
DATA    ?= ../shared/data/cats_vs_dogs_small
MNIST   ?= ../shared/data/mnist.npz
WEIGHTS ?= ../shared/weights/mobilenet_v2_0.35_224_imagenet_no_top.weights.h5
reproduce: $(STAMP)
	$(BIN)/python -m training reproduce --data $(DATA) --mnist $(MNIST) --base-weights $(WEIGHTS)
	$(BIN)/python -m loadtests.accuracy --data $(DATA) --mnist $(MNIST) --report docs/results.md

# Benchmark report in reports/bench-*/ (docs/benchmarks.md). MODEL=store name, IMAGES=folder
# (default: generated JPEGs), BENCH_ARGS=more options (python -m loadtests.bench --help);
# with --peer in them, the Triton peer's venv is made first.
PEER := $(findstring --peer,$(BENCH_ARGS))
bench: $(STAMP) $(if $(PEER),$(TRITON_STAMP))
	$(BIN)/python -m loadtests.bench $(if $(MODEL),--model $(MODEL)) $(if $(IMAGES),--images $(IMAGES)) \
		$(if $(PEER),--peer-python $(TRITON_VENV)/bin/python) $(BENCH_ARGS)

# Locust, headless, against a running service (make serve); CSV and HTML in reports/.
locust: $(STAMP)
	mkdir -p reports
	$(BIN)/locust -f loadtests/locustfile.py --host $(or $(HOST),http://127.0.0.1:3000) --headless \
		-u $(or $(USERS),16) -r 4 -t $(or $(TIME),1m) --csv reports/locust --html reports/locust.html

clean:
	rm -rf $(VENV) $(TRITON_VENV) data/demo data/demo-pretraining models/demo-*
