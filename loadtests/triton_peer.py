"""The benchmark's peer: NVIDIA Triton Inference Server serving a model package as the service does.

    .venv-triton/bin/python -m loadtests.triton_peer --model cvd-finetuned --queue-delay-us 1000 \\
        --instances 2 --port 8000 --grpc-port 8001 --metrics-port 8002

`python -m loadtests.bench --peer triton` starts it once per configuration, one after the other.
Triton runs through PyTriton (nvidia-pytriton, whose wheel ships the real `tritonserver` and its
Python backend). PyTriton needs numpy < 2, so this runs in a virtual environment of its own, made
from pyproject.toml's `triton-peer` extra by `make triton-peer` (.venv-triton).

The model, named as the package: input "images", BYTES [-1, 1] (each file's raw bytes), output
"probabilities", FP32 [-1, classes]; Triton's dynamic batcher up to --max-batch-size with
--queue-delay-us, and --instances model instances. Each instance is a Python callable with its
own `service.engine.Model` (the service's session options, threads, provider choice and warm-up)
that decodes its batch's files one after the other with `service.imaging.preprocess`, with the
service's settings from the environment (SERVICE_INFERENCE_THREADS, SERVICE_MAX_IMAGE_PIXELS,
SERVICE_JPEG_REDUCE, REQUIRE_GPU), then runs the batch: what a Triton user would write. Clients
speak KServe v2 over HTTP, binary tensors included (loadtests/v2.py). The callables run in this
process; `tritonserver` and its Python backend stubs are its children, so this process's tree is
the whole server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sysconfig

import numpy as np

from service import engine, imaging, registry, settings

INPUT = "images"
OUTPUT = "probabilities"


def infer_function(model: engine.Model, config: settings.Settings):
    """One model instance: a batch of files' bytes [N, 1] -> {"probabilities": [N, classes]}."""
    from pytriton.decorators import batch

    spec = model.package.input

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        tensors = np.stack([imaging.preprocess(data, spec, max_pixels=config.max_image_pixels,
                                               jpeg_reduce=config.jpeg_reduce) for data in images[:, 0]])
        probabilities, _ = model.run(tensors)
        return {OUTPUT: probabilities}

    return infer


def _library_path() -> None:
    """The Python backend stub links libpython; a Python that is not the system's (pyenv's, say)
    keeps it in its own lib folder, which the dynamic linker does not search unless told."""
    folder = sysconfig.get_config_var("LIBDIR")
    if folder and folder not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [folder, os.environ.get("LD_LIBRARY_PATH")]))


def _stop_on_sigterm() -> None:
    """SIGTERM (loadtests.servers.Server.stop) as Ctrl-C: PyTriton's serve() then stops tritonserver."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.triton_peer", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    default_model = settings.VARIABLES["SERVICE_DEFAULT_MODEL"][0]
    parser.add_argument("--model", default=default_model, help=f"model in the BentoML store, NAME or NAME:VERSION (default: {default_model})")
    parser.add_argument("--max-batch-size", type=int, default=32, help="Triton's max_batch_size (default: 32)")
    parser.add_argument("--queue-delay-us", type=int, default=0, help="the dynamic batcher's max_queue_delay_microseconds (default: 0)")
    parser.add_argument("--instances", type=int, default=1, help="model instances, each with its own ONNX Runtime session (default: 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address of every endpoint (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP (KServe v2) port (default: 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    args = parser.parse_args(argv)
    if min(args.max_batch_size, args.instances) < 1 or args.queue_delay_us < 0:
        parser.error("--max-batch-size and --instances must be at least 1, --queue-delay-us not negative")
    try:
        config = settings.load()
        package = registry.open_package(settings.load({"SERVICE_MODELS": args.model}).models[0])
        models = [engine.Model(package, config.inference_threads, config.require_gpu) for _ in range(args.instances)]
    except (settings.SettingsError, registry.ModelError) as err:
        raise SystemExit(f"error: {err}") from None

    _library_path()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    triton_config = TritonConfig(http_address=args.host, http_port=args.port, grpc_address=args.host,
                                 grpc_port=args.grpc_port, metrics_address=args.host, metrics_port=args.metrics_port,
                                 exit_on_error=True)
    _stop_on_sigterm()
    with Triton(config=triton_config) as triton:
        triton.bind(model_name=package.name, infer_func=[infer_function(model, config) for model in models],
                    inputs=[Tensor(name=INPUT, dtype=np.object_, shape=(1,))],
                    outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(len(package.classes),))],
                    config=ModelConfig(batching=True, max_batch_size=args.max_batch_size,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)))
        print(f"Triton serving {package.name}:{package.version} on http://{args.host}:{args.port} "
              f"({args.instances} instance(s), max batch {args.max_batch_size}, queue delay {args.queue_delay_us} us, "
              f"{config.inference_threads} intra-op thread(s) each, {models[0].provider})", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
