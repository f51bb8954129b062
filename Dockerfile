# The service's container image: a built bento (code, models) on a base with Python, its packages
# installed from a wheelhouse made outside the build, so the build itself needs no network.
# One file, two images; the base is a build argument:
#   make image      GPU: CUDA 13 + cuDNN 9 (what onnxruntime-gpu 1.31 is built against), Python 3.12
#   make image-cpu  CPU: Debian 12 with Python 3.11 and onnxruntime (tag convnet-serving:cpu)
# Each target writes the requirements from pyproject.toml (python -m service.dependencies), fetches
# their wheels for the base's Python (deploy/container/wheelhouse.sh), builds and exports the bento
# to build/bento.tar, then builds this file; .dockerignore sends only those. By hand:
#
#   podman build --build-arg BASE_IMAGE=python:3.11-slim-bookworm --build-arg WHEELHOUSE=build/wheels-cpu \
#       --format docker -t convnet-serving:cpu .     # --format docker keeps the HEALTHCHECK (podman)
#   podman run --read-only -p 3000:3000 convnet-serving:cpu
#
# Serving dependencies only (no TensorFlow), models baked in, a non-root user; it writes only under
# /tmp (BentoML's home and Prometheus files, uploads), so the root file system may be read-only with
# a tmpfs or emptyDir on /tmp. Settings: the environment variables of service/settings.py.
# SIGTERM drains: in-flight requests are answered, then it exits 0 (docs/deployment.md).

ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# The exported bento, unpacked (ADD unpacks a local tar) and made readable by all (its top folder
# comes as 0700), in a stage of its own so that the image holds one copy; root keeps it, so the
# service can read it but never change it.
FROM ${BASE_IMAGE} AS bento
ADD build/bento.tar /bento/
RUN chmod -R a+rX,go-w /bento

FROM ${BASE_IMAGE}
# The wheelhouse of this base's Python (build/wheels-gpu or build/wheels-cpu).
ARG WHEELHOUSE=build/wheels-gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BENTO_PATH=/home/bentoml/bento \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=True
# Python and its venv module from the base's packages where the base lacks them (the CUDA image);
# a base that has them (Debian's python3 + python3-venv, python:3.x-slim) needs no network here.
RUN if ! python3 -c "import ensurepip, venv" 2> /dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --create-home --uid 1034 --user-group bentoml

# Packages first, so that a new model or code change reuses this layer. The wheels are bound in
# for this step only: they do not stay in the image.
RUN --mount=type=bind,source=${WHEELHOUSE},target=/wheels \
    base=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    && { [ "$base" = "$(cat /wheels/python-version)" ] \
         || { echo "error: ${WHEELHOUSE} holds wheels for Python $(cat /wheels/python-version), the base has $base" >&2; exit 1; }; } \
    && pip install --no-index --find-links /wheels -r /wheels/requirements.txt

COPY --from=bento /bento $BENTO_PATH
USER bentoml
WORKDIR $BENTO_PATH
EXPOSE 3000
# Ready only once every model is loaded and warmed up; large models on a busy machine take a while.
# Python rather than curl: every base has it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]
CMD ["bentoml", "serve", "/home/bentoml/bento", "--host", "0.0.0.0", "--port", "3000"]
