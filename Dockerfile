# The GPU image of the service: a built bento (code, models, requirements) on CUDA 13 + cuDNN 9,
# what onnxruntime-gpu 1.31 is built against. Serving dependencies only (no TensorFlow),
# models baked in, a non-root user, a health check on /readyz, port 3000.
#
#   python -m service.dependencies build/requirements-serve.txt
#   bentoml build                                            # SERVICE_MODELS=... picks the models
#   bentoml export image_classifier:latest build/bento.tar   # the bento with its models
#   docker build -t convnet-serving:gpu .                    # .dockerignore sends only build/bento.tar
#   docker run --gpus all -p 3000:3000 -e REQUIRE_GPU=1 convnet-serving:gpu
#
# Settings are the environment variables of service/settings.py (`docker run -e ...`).
# tests/test_service_bento.py builds and exports the bento, runs this file's install step against
# it (offline, as a dry run) and serves it with no checkout beside it.

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# The exported bento, unpacked (ADD unpacks a local tar).
FROM busybox:1.37 AS bento
ADD build/bento.tar /bento/

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BENTO_PATH=/home/bentoml/bento \
    BENTOML_HOME=/home/bentoml/bentoml \
    BENTOML_DO_NOT_TRACK=True
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --create-home --uid 1034 --user-group bentoml

# Requirements first, so that a new model or code change reuses this layer.
COPY --from=bento /bento/env/python/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY --from=bento --chown=bentoml:bentoml /bento $BENTO_PATH
USER bentoml
WORKDIR $BENTO_PATH
EXPOSE 3000
# Ready only once every model is loaded and warmed up; large models on a busy machine take a while.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD curl -fsS http://127.0.0.1:3000/readyz || exit 1
CMD ["bentoml", "serve", "/home/bentoml/bento", "--host", "0.0.0.0", "--port", "3000"]
