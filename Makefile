# Two commands on a fresh machine: `make demo` and `make test`.
# Everything is installed from pyproject.toml into a virtual environment.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Demo and test runs stay on the CPU and quiet unless asked otherwise.
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: help install demo test test-system serve bento image reproduce bench locust clean

help:
	@echo "make demo   - install, then train (and export, serve) on the built-in demo dataset"
	@echo "make test   - install, then run the test suite (everything but the system tier)"
	@echo "make test-system - the system tier: containers, Prometheus, a browser (needs .ci/system-packages.txt installed)"
	@echo "make serve  - serve the registered models on http://localhost:3000 (SERVICE_MODELS=... picks them)"
	@echo "make bento  - build a bento (service, serving requirements, models) with bentoml build"
	@echo "make image  - the GPU Docker image of that bento (needs a Docker engine)"
	@echo "make reproduce DATA=... MNIST=... WEIGHTS=...  - the seed documents' accuracy ladder on real data (hours)"
	@echo "make bench MODEL=... IMAGES=...  - the benchmark harness (docs/benchmarks.md), reports in reports/"
	@echo "make locust HOST=... USERS=... TIME=...  - Locust, headless, against a running service"
	@echo "make clean  - remove the virtual environment and generated demo outputs"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,serve,dev]"
	touch $(STAMP)

install: $(STAMP)

# BASE_WEIGHTS=path/to/weights.h5 gives the transfer rungs real ImageNet weights offline.
demo: $(STAMP)
	$(BIN)/python -m training demo $(if $(BASE_WEIGHTS),--base-weights $(BASE_WEIGHTS))

test: $(STAMP)
	$(BIN)/python -m pytest -m "not system"

test-system: $(STAMP)
	$(BIN)/python -m pytest -m system

serve: $(STAMP)
	$(BIN)/bentoml serve service.service:ImageClassifier

bento: $(STAMP)
	$(BIN)/python -m service.dependencies build/requirements-serve.txt
	$(BIN)/bentoml build

image: bento
	$(BIN)/bentoml export image_classifier:latest build/bento.tar
	docker build -t convnet-serving:gpu .

# The seed documents' table on real data: train + export the ladder and MNIST (hours on 2 cores;
# rungs already trained with the same options are reused), then measure them through the service.
DATA    ?= ../shared/data/cats_vs_dogs_small
MNIST   ?= ../shared/data/mnist.npz
WEIGHTS ?= ../shared/weights/mobilenet_v2_0.35_224_imagenet_no_top.weights.h5
reproduce: $(STAMP)
	$(BIN)/python -m training reproduce --data $(DATA) --mnist $(MNIST) --base-weights $(WEIGHTS)
	$(BIN)/python -m loadtests.accuracy --data $(DATA) --mnist $(MNIST) --report docs/results.md

# Benchmark report in reports/bench-*/ (docs/benchmarks.md). MODEL=store name, IMAGES=folder
# (default: generated JPEGs), BENCH_ARGS=more options (python -m loadtests.bench --help).
bench: $(STAMP)
	$(BIN)/python -m loadtests.bench $(if $(MODEL),--model $(MODEL)) $(if $(IMAGES),--images $(IMAGES)) $(BENCH_ARGS)

# Locust, headless, against a running service (make serve); CSV and HTML in reports/.
locust: $(STAMP)
	mkdir -p reports
	$(BIN)/locust -f loadtests/locustfile.py --host $(or $(HOST),http://127.0.0.1:3000) --headless \
		-u $(or $(USERS),16) -r 4 -t $(or $(TIME),1m) --csv reports/locust --html reports/locust.html

clean:
	rm -rf $(VENV) data/demo data/demo-pretraining models/demo-*
