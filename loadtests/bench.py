"""python -m loadtests.bench: the service against the raw engine, decoding, the framework floor and a
naive Keras server, for one model and one set of image files, measured side by side in one run.

  1. engine    ONNX Runtime alone (service.engine) on preprocessed tensors, batch 1, 2, 4 ... 64
  2. decode    service.imaging.preprocess on the same files: one thread, then a thread per core
  3. floor     loadtests/floor_service.py: the same upload through BentoML, a constant answer
  4. service   `bentoml serve service.service:ImageClassifier` at each concurrency, with 1 and with
               16 images per request: images/s, latency percentiles, errors, mean batch size
     v2        the service again, on a fresh server, at its Open Inference Protocol endpoint (POST
               /v2/models/NAME/infer, the files as a binary BYTES tensor, the probabilities back as
               binary data), same levels
  5. peer      with --peer triton: NVIDIA Triton Inference Server (PyTriton, in its own venv: make
               triton-peer) serving the same model package over KServe v2, in every configuration of
               --peer-queue-delays-ms x --peer-instances, one after the other; the best at each level
               against the service, and whether both gave every file the same top-1 class
  6. naive     loadtests/naive_server.py: Keras model.predict, one image per request
The ceiling for each level is 1 / (1/engine + 1/decode + 1/floor): the three share the cores.
Every server is started, warmed up and stopped here, one at a time. The report (Markdown, JSON,
plots, server logs) goes to --out. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from service import imaging, registry, settings
from service.registry import ModelError, ModelPackage
from service.settings import SettingsError

from . import command, components, images, loadgen, machine, peer, protocols, report, v2, verdicts
from .servers import REPO, SERVICE, Server, metric_value, serve_env

FLOOR = "loadtests.floor_service:Floor"
STAGES = ("engine", "decode", "floor", "service", "v2", "naive")


class BenchError(command.CommandError):
    """A user mistake or an unusable setup; the message is one line."""


@dataclass
class ServiceSetup:
    """One configuration of the service: the settings given (the rest are defaults), and what they make."""

    label: str
    given: dict[str, str]
    config: settings.Settings
    env: dict[str, str]  # the servers' environment


@dataclass
class Plan:
    args: argparse.Namespace
    model: settings.ModelRef
    package: ModelPackage
    services: list[ServiceSetup]  # --set first (the floor and the naive server run with it too), then --compare
    files: list[Path]
    images_label: str
    out: Path
    notes: list[str] = field(default_factory=list)
    cleanup: list[tempfile.TemporaryDirectory] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command.parser("python -m loadtests.bench", __doc__,
                            set_help="a service setting for the floor and the service (repeatable), e.g. SERVICE_MAX_BATCH_SIZE=16")
    parser.add_argument("--phone-photos", type=int, metavar="N",
                        help="make N 12-megapixel JPEGs by upscaling --images files (in --phone-dir) and send those instead")
    parser.add_argument("--phone-dir", type=Path,
                        help="where the phone-sized photos are made and kept for later runs (default: a temporary folder, removed)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client concurrency levels (default: 1 4 16 64)")
    parser.add_argument("--images-per-request", type=int, nargs="+", default=[1, 16], help="images in each request (default: 1 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="engine batch sizes (default: 1 2 4 8 16 32 64)")
    parser.add_argument("--component-seconds", type=float, default=3.0,
                        help="seconds measuring decode (each way) and each engine batch size (default: 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each level (default: 2)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured at each level (default: 5)")
    parser.add_argument("--min-requests", type=int, default=50,
                        help="extend a level's window until this many answers, up to --max-window (default: 50)")
    parser.add_argument("--max-window", type=float, default=30.0, help="longest measurement window of a level, seconds (default: 30)")
    parser.add_argument("--max-images-in-flight", type=int, metavar="N",
                        help="leave out the levels where clients x images per request exceeds N (12 MP photos: the slowest)")
    parser.add_argument("--compare", action="append", default=[], metavar="SERVICE_X=VALUE,...",
                        help="measure the service again with these settings instead of --set's ('defaults': none), "
                             "side by side in the same run (repeatable)")
    parser.add_argument("--keras-model", type=Path,
                        help="the trained model folder (model.keras) for the naive server (default: models/NAME)")
    parser.add_argument("--peer", choices=("triton",),
                        help="also measure Triton Inference Server serving the same model package (docs/benchmarks.md); "
                             "it runs in its own venv, made by `make triton-peer`")
    parser.add_argument("--peer-python", type=Path, default=peer.PYTHON,
                        help=f"the peer venv's Python (default: {peer.PYTHON.relative_to(REPO)})")
    parser.add_argument("--peer-queue-delays-ms", type=float, nargs="+", default=list(peer.QUEUE_DELAYS_MS),
                        help="Triton's dynamic batcher queue delays to try, ms (default: 0 1 2)")
    parser.add_argument("--peer-instances", type=int, nargs="+", default=list(peer.INSTANCES),
                        help="Triton model instance counts to try, each with every queue delay (default: 1 2)")
    parser.add_argument("--peer-max-batch-size", type=int, default=peer.MAX_BATCH_SIZE,
                        help=f"Triton's max_batch_size (default: {peer.MAX_BATCH_SIZE})")
    parser.add_argument("--skip", action="append", default=[], choices=STAGES, help="leave a stage out (repeatable)")
    parser.add_argument("--out", type=Path,
                        help="report folder, made if missing: bench.md, bench.json, throughput.png, latency.png, time.png "
                             "and the servers' logs in logs/ (default: reports/bench-MODEL-IMAGES-TIME)")
    args = parser.parse_args(argv)
    for name in ("limit", "phone_photos", "min_requests", "max_images_in_flight"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.concurrency + args.images_per_request + args.batch_sizes) < 1:
        parser.error("concurrency levels, images per request and batch sizes must be at least 1")
    if args.duration <= 0 or args.component_seconds <= 0 or args.warmup < 0:
        parser.error("--duration and --component-seconds must be positive, --warmup not negative")
    if min(args.peer_instances + [args.peer_max_batch_size]) < 1 or min(args.peer_queue_delays_ms) < 0:
        parser.error("--peer-instances and --peer-max-batch-size must be at least 1, --peer-queue-delays-ms not negative")
    return args


def prepare(args: argparse.Namespace) -> Plan:
    """Check everything the run needs before starting anything; make the images."""
    if args.peer:
        # absolute, not resolved: a venv's python is a link out of the venv, which it must not leave
        args.peer_python = args.peer_python.absolute()
        problem = peer.python_problem(args.peer_python)
        if problem:
            raise BenchError(problem)
        if "service" in args.skip:
            raise BenchError("--peer triton is measured against the service: do not --skip service")
    given = [command.given_settings("--set", args.set)] + [command.given_settings("--compare", item.split(",")) for item in args.compare]
    try:
        model = settings.load({"SERVICE_MODELS": args.model}).models[0]
        package = registry.open_package(model)
    except SettingsError as err:
        raise BenchError(f"--model: {err}") from None
    except ModelError as err:
        raise BenchError(str(err)) from None

    cleanup: list[tempfile.TemporaryDirectory] = []
    if args.images is not None:
        try:
            files = images.image_files(args.images, args.limit)
        except images.ImagesError as err:
            raise BenchError(f"--images: {err}") from None
        label = args.images.name
    else:
        if args.phone_photos:
            raise BenchError("--phone-photos needs --images: the real photos to upscale")
        generated = tempfile.TemporaryDirectory(prefix="bench-images-")
        cleanup.append(generated)
        for name, data in images.generated_jpegs(min(args.limit, 32)):
            Path(generated.name, name).write_bytes(data)
        files = images.image_files(Path(generated.name))
        label = "generated"
    if args.phone_photos:
        if args.phone_dir is None:
            phone = tempfile.TemporaryDirectory(prefix="bench-phone-")
            cleanup.append(phone)
            phone_dir = Path(phone.name)
        else:
            phone_dir = args.phone_dir
        sources = images.image_files(args.images, args.phone_photos)
        _progress(f"making {len(sources)} phone-sized photos in {phone_dir}")
        files = images.make_phone_photos(sources, phone_dir)
        label = f"{label}-phone"

    notes: list[str] = []
    if args.peer:
        if max(args.images_per_request) > args.peer_max_batch_size:
            notes.append(f"Triton takes no request of more images than its max_batch_size ({args.peer_max_batch_size}): "
                         f"the peer leaves out {', '.join(str(k) for k in args.images_per_request if k > args.peer_max_batch_size)} "
                         f"images per request")
    largest = max(args.images_per_request) * max(f.stat().st_size for f in files) + 64 * 1024
    services = [_service_setup(args, model, chosen, largest, notes) for chosen in given]
    if "naive" not in args.skip:
        keras_dir = args.keras_model or REPO / "models" / model.name
        if not (keras_dir / "model.keras").is_file():
            raise BenchError(f"the naive baseline needs the trained Keras model: {keras_dir} has no model.keras; "
                             f"pass --keras-model DIR or --skip naive")
        args.keras_model = keras_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "reports" / f"bench-{model.name}-{label}-{stamp}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    return Plan(args, model, package, services, files, label, out, notes, cleanup)


def _service_setup(args: argparse.Namespace, model: settings.ModelRef, given: dict[str, str], largest_body: int,
                   notes: list[str]) -> ServiceSetup:
    label = ", ".join(f"{k}={v}" for k, v in given.items()) or "defaults"
    chosen = {**given, "SERVICE_MODELS": args.model, "SERVICE_DEFAULT_MODEL": model.name}
    try:
        config = settings.load(chosen)
        if largest_body > config.max_body_bytes and "SERVICE_MAX_BODY_BYTES" not in given:
            limit = -(-largest_body // 2**20) * 2**20
            chosen["SERVICE_MAX_BODY_BYTES"] = str(limit)
            config = settings.load(chosen)
            note = (f"SERVICE_MAX_BODY_BYTES raised to {limit} ({limit >> 20} MiB) for the largest request "
                    f"({max(args.images_per_request)} images) of this run")
            if note not in notes:
                notes.append(note)
    except SettingsError as err:
        raise BenchError(f"{label}: {err}") from None
    if max(args.images_per_request) > config.max_images_per_request:
        raise BenchError(f"--images-per-request {max(args.images_per_request)} is more than SERVICE_MAX_IMAGES_PER_REQUEST "
                         f"({config.max_images_per_request}); --set SERVICE_MAX_IMAGES_PER_REQUEST=N")
    env = serve_env(**chosen)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return ServiceSetup(label, given, config, env)


# --- the run -------------------------------------------------------------------------------------

_START = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.0f} s] {message}", flush=True)


def _classify(plan: Plan) -> loadgen.Endpoint:
    return loadgen.classify_endpoint({"model": plan.model.name})


def _v2_infer(plan: Plan) -> loadgen.Endpoint:
    """The service's own v2 infer endpoint, as tritonclient calls it: BYTES [n] in, FP32 out, binary."""
    return v2.infer_endpoint(plan.model.name, "image_bytes", "probabilities", plan.package.classes, file_shape=())


MetricDeltas = Callable[[str, str, int], dict]  # (/metrics before, after, requests answered) -> level["server"]


def _levels(plan: Plan, server: Server, stage: str, images_per_request: list[int], *, endpoint: loadgen.Endpoint,
            metric_deltas: MetricDeltas | None = None) -> list[dict]:
    """Every (images per request, concurrency) level against `server`'s `endpoint`."""
    files = images.read_files(plan.files)
    args = plan.args
    url = server.url + endpoint.path
    results = []
    for per_request in images_per_request:
        bodies = endpoint.bodies(files, per_request)

        def snapshot():
            return {"cpu": server.cpu_seconds(), "machine_busy_s": machine.busy_seconds(),
                    "metrics": server.metrics() if metric_deltas else ""}

        # Warm the server (and BentoML's batcher, which learns the model's latency) before the first level.
        loadgen.run_level(url, bodies, 4, warmup_s=0, duration_s=1.0, timeout_s=_timeout(plan))
        for concurrency in args.concurrency:
            if args.max_images_in_flight and concurrency * per_request > args.max_images_in_flight:
                _progress(f"{stage:8s} {concurrency:3d} clients x {per_request:2d} images: left out (--max-images-in-flight)")
                continue
            level = loadgen.run_level(url, bodies, concurrency, warmup_s=args.warmup,
                                      duration_s=args.duration, min_requests=args.min_requests,
                                      max_window_s=args.max_window, timeout_s=_timeout(plan), snapshot=snapshot,
                                      parse=endpoint.parse)
            summary = level.summary()
            before, after = level.snapshots
            server_cpu = {role: after["cpu"][role] - before["cpu"].get(role, 0.0) for role in after["cpu"]}
            summary["server_cpu_ms_per_request"] = {role: 1000 * seconds / max(1, summary["requests"])
                                                   for role, seconds in server_cpu.items() if seconds > 0}
            # What the rest of the machine used meanwhile (other people's work on a shared machine), in cores.
            others = after["machine_busy_s"] - before["machine_busy_s"] - sum(server_cpu.values()) - level.cpu_s
            summary["other_processes_cores"] = max(0.0, others / level.window_s)
            if metric_deltas:
                summary["server"] = metric_deltas(before["metrics"], after["metrics"], summary["requests"])
            summary["answer_ok"] = _answer_ok(endpoint, level.first_answer, per_request)
            results.append(summary)
            mean_batch = summary.get("server", {}).get("mean_batch")
            _progress(f"{stage:8s} {concurrency:3d} clients x {per_request:2d} images: {summary['images_per_s']:7.1f} images/s, "
                      f"p50 {_ms(summary['latency_ms']['p50'])}, p99 {_ms(summary['latency_ms']['p99'])}, "
                      f"{summary['errors']} errors, others {summary['other_processes_cores']:.1f} cores"
                      + (f", mean batch {mean_batch:.1f}" if mean_batch else ""))
    return results


def _timeout(plan: Plan) -> float:
    return float(max(60, max(setup.config.timeout_s for setup in plan.services) + 30))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _answer_ok(endpoint: loadgen.Endpoint, answer: object, images_per_request: int) -> bool | None:
    """Whether the first answer of a level gives one classification per image."""
    if answer is None:
        return None
    labels = endpoint.labels(answer)
    return labels is not None and len(labels) == images_per_request


# Each public endpoint's request durations in the service's /metrics: (metric, labels)
PUBLIC_SECONDS = {"/classify": ("bentoml_service_request_duration_seconds", {"endpoint": "/classify"}),
                  "v2": ("imgcls_request_duration_seconds", {"endpoint": "v2", "status_class": "2xx"})}


def _metric_deltas(before: str, after: str, model: str, requests: int, public: str = "/classify") -> dict:
    """What the service's /metrics say about the window: batches, and where a request's time went
    (`public`: the endpoint measured, a PUBLIC_SECONDS key)."""
    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    batches = delta("imgcls_batch_size_images_count", model=model)
    queued = delta("imgcls_queue_wait_seconds_count", model=model)
    images_in_batches = delta("imgcls_batch_size_images_sum", model=model)
    public_name, public_labels = PUBLIC_SECONDS[public]
    public_calls = delta(f"{public_name}_count", **public_labels)
    per_request = max(1, requests)
    return {
        "batches": batches,
        "mean_batch": images_in_batches / batches if batches else None,
        "ort_ms_per_batch": 1000 * delta("imgcls_inference_duration_seconds_sum", model=model) / batches if batches else None,
        "decode_ms_per_request": 1000 * delta("imgcls_preprocess_duration_seconds_sum", model=model) / per_request,
        "public_ms_per_request": 1000 * delta(f"{public_name}_sum", **public_labels) / public_calls
        if public_calls else None,
        "queue_wait_ms_per_image": 1000 * delta("imgcls_queue_wait_seconds_sum", model=model) / queued if queued else None,
    }


def _serve(plan: Plan, name: str, setup: ServiceSetup, command: list[str] | None = None, target: str | None = None,
           server: Server | None = None) -> Server:
    log = plan.out / "logs" / f"{name}.log"
    if server is None:
        server = Server(command, setup.env, log) if command else Server.bentoml(target, setup.env, log)
    try:
        server.wait_ready(300)
    except RuntimeError as err:
        raise BenchError(f"the {name} server did not start; see {server.log_path}: {str(err).splitlines()[0]}") from None
    return server


def _peer_stage(plan: Plan, setup: ServiceSetup) -> dict:
    """Triton in every configuration, one server after the other, with --set's settings (threads,
    decoding) and the same levels; each file's top-1 label from each configuration."""
    args = plan.args
    per_request = [k for k in args.images_per_request if k <= args.peer_max_batch_size]
    endpoint = peer.endpoint(plan.package)
    found: dict = {"name": "triton", "images_per_request": per_request, "max_batch_size": args.peer_max_batch_size,
                   "inference_threads": setup.config.inference_threads, "configurations": []}
    for config in peer.configurations(args.peer_queue_delays_ms, args.peer_instances, args.peer_max_batch_size):
        _progress(f"{'triton':8s} starting ({config.label})")
        log = plan.out / "logs" / f"{config.name}.log"
        server = _serve(plan, config.name, setup, server=peer.server(args.peer_python, args.model, config, setup.env, log))
        try:
            found.setdefault("versions", peer.versions(server, args.peer_python))
            levels = _levels(plan, server, "triton", per_request, endpoint=endpoint,
                             metric_deltas=lambda before, after, requests: peer.metric_deltas(before, after, plan.model.name, requests))
            found["configurations"].append(peer.measured(config, levels, peer.top1(server, endpoint, plan.files)))
        finally:
            server.stop()
    return found


def _file_name(plan: Plan, path: Path) -> str:
    """A file as the report names it: its path under --images (class folders may repeat names)."""
    try:
        return str(path.relative_to(plan.args.images))
    except (TypeError, ValueError):
        return path.name


def _settings(config: settings.Settings) -> dict:
    return {name: getattr(config, name) for name in ("max_batch_size", "max_latency_ms", "workers", "inference_threads",
                                                      "jpeg_reduce", "max_images_per_request", "max_body_bytes", "timeout_s")}


@dataclass(frozen=True)
class Stage:
    """One server measured at its levels: the floor, the service, each --compare, the naive baseline."""

    name: str  # its key in the results and its log's name: floor, service, compare1, compare2, ..., naive
    kind: str  # what --skip names: one of STAGES, or "compare" (left out with the service)
    setup: ServiceSetup
    how: dict  # _serve's target= (a BentoML service) or command= (any other server)
    images_per_request: list[int]
    with_metrics: bool  # whether it exports the service's /metrics
    endpoint: Callable[[Plan], loadgen.Endpoint] = _classify  # what its levels call


def _stages(plan: Plan) -> list[Stage]:
    primary, per_request = plan.services[0], plan.args.images_per_request
    naive = [sys.executable, "-m", "loadtests.naive_server", "--model-dir", str(plan.args.keras_model)]
    return [Stage("floor", "floor", primary, dict(target=FLOOR), per_request, False),
            Stage("service", "service", primary, dict(target=SERVICE), per_request, True),
            *(Stage(f"compare{i}", "compare", setup, dict(target=SERVICE), per_request, True)
              for i, setup in enumerate(plan.services[1:], 1)),
            Stage("v2", "v2", primary, dict(target=SERVICE), per_request, True, _v2_infer),
            Stage("naive", "naive", primary, dict(command=naive), [1], False)]


def run(plan: Plan) -> dict:
    args = plan.args
    primary = plan.services[0]
    results: dict = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m loadtests.bench " + shlex.join(sys.argv[1:]),
        "machine": machine.describe(),
        "activity_before": machine.activity(),
        "model": {"tag": f"{plan.package.name}:{plan.package.version}", **plan.package.summary(),
                  "base": plan.package.manifest.get("base")},
        "images": _describe_images(plan),
        "settings": _settings(primary.config),
        "settings_given": primary.label,
        "protocol": {"concurrency": args.concurrency, "images_per_request": args.images_per_request,
                     "warmup_s": args.warmup, "duration_s": args.duration, "min_requests": args.min_requests,
                     "max_window_s": args.max_window, "component_seconds": args.component_seconds,
                     "max_images_in_flight": args.max_images_in_flight},
        "notes": plan.notes,
    }
    for note in plan.notes:
        _progress(f"note: {note}")
    cores = settings.cpu_count()
    if "decode" not in args.skip:
        _progress(f"decode   {len(plan.files)} files, 1 thread then {cores}")
        results["decode"] = components.measure_decode(plan.files, plan.package, primary.config, threads=cores,
                                                       seconds=args.component_seconds)
        d = results["decode"]
        _progress(f"decode   {d['latency_ms']['p50']:.2f} ms per image (p50), {d['images_per_s']:.0f} images/s on {cores} threads")
    if "engine" not in args.skip:
        tensors = np.stack([imaging.preprocess(path.read_bytes(), plan.package.input, max_pixels=primary.config.max_image_pixels,
                                               jpeg_reduce=primary.config.jpeg_reduce) for path in plan.files[:64]])
        results["engine"] = components.measure_engine(plan.package, tensors, sorted(set(args.batch_sizes)),
                                                      threads=sorted({1, cores}),
                                                      seconds=args.component_seconds)
        for batch in results["engine"]["batches"]:
            _progress(f"engine   batch {batch['batch_size']:3d}: {batch['images_per_s']:7.1f} images/s, "
                      f"{batch['latency_ms']['p50']:.1f} ms per batch ({results['engine']['provider']}, "
                      f"{batch['threads']} thread{'s' if batch['threads'] > 1 else ''}, the faster)")
    for stage in _stages(plan):
        if stage.kind == "naive" and args.peer:  # the peer right after the service (and its comparisons)
            results["peer"] = _peer_stage(plan, primary)
        if stage.kind in args.skip or (stage.kind == "compare" and "service" in args.skip):
            continue
        _progress(f"{stage.name:8s} starting" + (f" ({stage.setup.label})" if stage.kind != "naive" else ""))
        server = _serve(plan, stage.name, stage.setup, **stage.how)
        public = "v2" if stage.kind == "v2" else "/classify"
        deltas = ((lambda before, after, requests: _metric_deltas(before, after, plan.model.name, requests, public))
                  if stage.with_metrics else None)
        try:
            measured = {"levels": _levels(plan, server, stage.name, stage.images_per_request, endpoint=stage.endpoint(plan),
                                          metric_deltas=deltas)}
            if stage.kind == "v2" or (stage.kind == "service" and (args.peer or "v2" not in args.skip)):
                measured["top1"] = peer.top1(server, stage.endpoint(plan), plan.files)
        finally:
            server.stop()
        if stage.kind == "compare":
            results.setdefault("service_compared", []).append(
                {"label": stage.setup.label, "settings": _settings(stage.setup.config), **measured})
        else:
            results[stage.name] = measured
    if args.peer:
        results["peer_comparison"] = peer.comparison(results)
        results["top1_agreement"] = peer.agreement(results, [_file_name(plan, path) for path in plan.files])
    if "v2" in results:
        results["protocols"] = protocols.comparison(results)
        results["protocols_agreement"] = protocols.agreement(results, [_file_name(plan, path) for path in plan.files])
    results["ceiling"] = verdicts.ceilings(results)
    results["targets"] = verdicts.targets(results)
    results["activity_after"] = machine.activity()
    return results


def _describe_images(plan: Plan) -> dict:
    sizes: dict[str, int] = {}
    orientations: dict[int, int] = {}
    for path in plan.files:
        with Image.open(path) as image:
            sizes[f"{image.width}x{image.height}"] = sizes.get(f"{image.width}x{image.height}", 0) + 1
            orientation = image.getexif().get(images.EXIF_ORIENTATION, 1)
            orientations[orientation] = orientations.get(orientation, 0) + 1
    byte_sizes = [path.stat().st_size for path in plan.files]
    return {"label": plan.images_label, "source": str(plan.args.images) if plan.args.images else "generated",
            "phone_photos": bool(plan.args.phone_photos), "files": len(plan.files),
            "mean_bytes": int(np.mean(byte_sizes)), "max_bytes": max(byte_sizes),
            "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:5]), "exif_orientations": orientations}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        plan = prepare(args)
    except command.CommandError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        _progress(f"model {plan.package.name}:{plan.package.version}, {len(plan.files)} files ({plan.images_label}), "
                  f"report in {plan.out}")
        results = run(plan)
        paths = report.write(results, plan.out)
    except command.CommandError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        for folder in plan.cleanup:
            folder.cleanup()
    print(report.summary_lines(results))
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
