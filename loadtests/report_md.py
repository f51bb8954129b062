"""bench.md: the benchmark's report in Markdown, a section a function, from a run's results."""

from __future__ import annotations

import json

from . import costs, figures, levels, peer, protocols, verdicts


def fixed(value, digits: int = 1, suffix: str = "") -> str:
    """A number with `digits` decimals and `suffix`, "-" for None."""
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _base_text(base: dict | None) -> str:
    """The pretrained base in one line: the manifest's list of unfrozen layer names is left out."""
    if not base:
        return "none"
    return json.dumps({k: v for k, v in base.items() if k != "unfrozen"})


def markdown(results: dict) -> str:
    """bench.md: what ran where, the targets' verdicts, the service level by level, then each
    comparison, the parts alone, where the time goes and the load generator's share."""
    parts = _run_section(results) + _targets_section(results) + _service_section(results)
    parts += _compared_section(results)
    parts += _protocols_section(results)
    parts += _peer_section(results)
    parts += _parts_alone(results)
    parts += _time_section(results)
    parts += _loadgen_section(results)
    return "\n".join(parts) + "\n"


def _run_section(results: dict) -> list[str]:
    """The title and command, the machine and what else ran on it, the model, images and settings."""
    m, model, imgs = results["machine"], results["model"], results["images"]
    parts = [f"# Benchmark: {model['tag']} on {imgs['label']} images", "",
             f"`{results['command']}` ({results['created_at']})", ""]
    gpu = ", ".join(m["gpu"]) or "none"
    parts += ["## Machine", "",
              f"{m['cpu']}, {m['cores_usable']} usable cores ({m['logical_cpus']} logical CPUs), {m['memory_gib']} GiB, GPU: {gpu}; "
              f"{m['os']}, Python {m['python']}.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", ""]
    for when in ("before", "after"):
        activity = results.get(f"activity_{when}")
        if activity:
            busy = "; ".join(f"{p['command'][:90]} ({p['cpu_percent']}%)" for p in activity["busy_processes"]) or "nothing else busy"
            parts.append(f"- {when} the run: load average {activity['load_average']}; {busy}")
    settings = results["settings"]
    parts += ["", "## Model, images, settings", "",
              f"- model {model['tag']} ({model.get('recipe')}), input {model['input']['height']}x{model['input']['width']}x"
              f"{model['input']['channels']}, base {_base_text(model.get('base'))}",
              f"- {imgs['files']} files from {imgs['source']}{' (12-megapixel, made by upscaling)' if imgs['phone_photos'] else ''}: "
              f"{', '.join(f'{k} ({v})' for k, v in imgs['sizes'].items())}; mean {imgs['mean_bytes'] / 1024:.0f} KiB; "
              f"EXIF orientations {imgs['exif_orientations']}",
              "- service settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
              f"- protocol: {results['protocol']}"]
    return parts + [f"- note: {note}" for note in results.get("notes", [])]


def _targets_section(results: dict) -> list[str]:
    return ["", "## Targets", "",
            _table(["target", "measured", "result"],
                   [[t["target"], t["measured"], _verdict_md(t)] for t in results.get("targets", [])]), "",
            "The targets are issue 5's, for one image per request: the service with --set's settings "
            f"({results.get('settings_given', 'defaults')}). \"errors at every level\" reports the errors of every "
            "level (16 images per request too) and is not a target. The p99 row is met where no level's p99 exceeds "
            f"{verdicts.TAIL_FACTOR:.0f}x its p50; where some do, it lists them with the floor's p99/p50 at the same level "
            "(a floor tail as long means the framework, not the service's work, makes it) and says \"see text\": "
            "a tail is explained in writing (docs/benchmarks.md), which the harness cannot judge.", ""]


def _service_section(results: dict) -> list[str]:
    """The figures, then a table per images per request: the service against the ceiling and the naive server."""
    parts = [f"## Service ({results.get('settings_given', 'defaults')}), ceiling and naive baseline", "", "![images/s against concurrency](throughput.png)",
             "![latency percentiles](latency.png)", "",
             plot_legend(results) + " Engine alone: the fastest measured batch size the level can fill. "
             "Both plots have log scales.", "",
             "Ceiling: 1 / (1/engine + 1/decode + 1/floor) for the level (the engine at the fastest batch size the level "
             "can fill, with the faster thread count; the floor at the same level). Others' cores: the CPU the rest of "
             "the machine used during the window.", ""]
    for per_request in results["protocol"]["images_per_request"]:
        rows = []
        for level in (results.get("service") or {}).get("levels", []):
            if level["images_per_request"] != per_request:
                continue
            c = level["concurrency"]
            ceiling = levels.ceiling(results, c, per_request)
            naive = levels.find(results.get("naive"), c, per_request)
            lat = level["latency_ms"]
            rows.append([str(c), fixed(level["images_per_s"]), fixed(ceiling),
                         fixed(100 * level["images_per_s"] / ceiling if ceiling else None, 0, "%"),
                         fixed(naive["images_per_s"]) if naive else "-",
                         fixed(level["images_per_s"] / naive["images_per_s"], 1, "x") if naive and naive["images_per_s"] else "-",
                         fixed(lat["p50"]), fixed(lat["p95"]), fixed(lat["p99"]), fixed(levels.tail(level), 1, "x"),
                         str(level["errors"]), fixed((level.get("server") or {}).get("mean_batch"), 1),
                         fixed(level.get("other_processes_cores"), 1)])
        parts += [f"### {per_request} image{'s' if per_request > 1 else ''} per request", "",
                  _table(["clients", "images/s", "ceiling", "of ceiling", "naive", "vs naive", "p50 ms", "p95 ms",
                          "p99 ms", "p99/p50", "errors", "mean batch", "others' cores"], rows), ""]
    return parts


def _verdict_md(target: dict) -> str:
    verdict = target.get("verdict") or verdicts.VERDICTS[target["met"]]
    return f"**{verdict}**" if verdict == "missed" else verdict


def _compared_section(results: dict) -> list[str]:
    """The service with each set of settings measured in this run, level by level."""
    measured = figures.setups(results)
    if len(measured) < 2:
        return []
    parts = ["## Service settings compared (same run)", "",
             "images/s (share of the ceiling), p50 / p99 ms, CPU ms per image (all processes, load generator included).", ""]
    for per_request in results["protocol"]["images_per_request"]:
        header = ["settings"] + [f"{c} client{'s' if c > 1 else ''}" for c in results["protocol"]["concurrency"]]
        rows = []
        for setup in measured:
            cells = [f"{setup['name']}: {setup['label']}"]
            for c in results["protocol"]["concurrency"]:
                level = levels.find(setup, c, per_request)
                if level is None:
                    cells.append("-")
                    continue
                ceiling = levels.ceiling(results, c, per_request)
                used, _ = costs.cpu_per_image(results, level)
                cells.append(f"{level['images_per_s']:.1f}" + (f" ({level['images_per_s'] / ceiling:.0%})" if ceiling else "")
                             + f", {fixed(level['latency_ms']['p50'], 0)} / {fixed(level['latency_ms']['p99'], 0)} ms, "
                             f"{sum(used.values()):.1f} ms CPU" + (f", {level['errors']} errors" if level["errors"] else ""))
            rows.append(cells)
        parts += [f"{per_request} image{'s' if per_request > 1 else ''} per request:", "", _table(header, rows), ""]
    return parts


def _protocols_section(results: dict) -> list[str]:
    rows = protocols.comparison(results)
    if not rows:
        return []
    agreement = results.get("protocols_agreement") or {}
    same = (f"the same top-1 class from both on every one of the {agreement['files']} files" if agreement.get("same") else
            f"**top-1 classes differ** on {len(agreement.get('different', []))} of {agreement.get('files', 0)} files: "
            + "; ".join(f"{d['file']} ({d['classify']} / {d['v2']})" for d in agreement.get("different", [])[:10]))
    parts = ["## The service's two protocols (same run)", "",
             "The service's own `/classify` (multipart files in, JSON out) against its Open Inference Protocol endpoint "
             "`POST /v2/models/NAME/infer` (the files as one binary BYTES tensor `image_bytes` [n], `probabilities` asked "
             "for as binary data, as `tritonclient` sends them): the same settings, files and levels, each on a fresh server, "
             f"one after the other; {same}. CPU: ms per image of the server's processes and the load generator together.", ""]
    for per_request in results["protocol"]["images_per_request"]:
        chosen = [row for row in rows if row["images_per_request"] == per_request]
        if not chosen:
            continue
        table = [[str(row["concurrency"]), fixed(row["classify"]["images_per_s"]), fixed(row["v2"]["images_per_s"]), fixed(row["ratio"], 2, "x"),
                  f"{fixed(row['classify']['p50_ms'])} / {fixed(row['v2']['p50_ms'])}", f"{fixed(row['classify']['p99_ms'])} / {fixed(row['v2']['p99_ms'])}",
                  f"{fixed(row['classify']['cpu_ms_per_image'])} / {fixed(row['v2']['cpu_ms_per_image'])}",
                  f"{fixed(row['classify']['mean_batch'])} / {fixed(row['v2']['mean_batch'])}",
                  f"{row['classify']['errors']} / {row['v2']['errors']}"] for row in chosen]
        parts += [f"### {per_request} image{'s' if per_request > 1 else ''} per request", "",
                  _table(["clients", "/classify images/s", "v2 images/s", "v2 / classify", "p50 ms (classify / v2)",
                          "p99 ms", "CPU ms/image", "mean batch", "errors"], table), ""]
    return parts


def _peer_section(results: dict) -> list[str]:
    """The service against Triton (--peer triton): at each level Triton's best configuration, then all of them."""
    found = results.get("peer")
    if not found:
        return []
    versions = found.get("versions", {})
    runtime = versions.get("onnxruntime-gpu") or versions.get("onnxruntime", "?")
    parts = ["## The service against Triton Inference Server (same run)", "",
             f"NVIDIA Triton Inference Server {versions.get('tritonserver', '?')} through PyTriton {versions.get('nvidia-pytriton', '?')} "
             f"(in its own venv: numpy {versions.get('numpy', '?')}, ONNX Runtime {runtime}), serving the same model package: "
             "the files' raw bytes in (BYTES), decoded one after the other in each model instance's Python callable with "
             f"service.imaging.preprocess, then the service's ONNX Runtime session options with {found['inference_threads']} "
             f"intra-op thread(s) per instance; dynamic batching up to {found['max_batch_size']}. KServe v2 over HTTP with "
             "binary tensors, the same load generator and files, one server after the other. At each level the configuration "
             "with the most images/s (one without errors first) counts, as a Triton user would tune it. CPU: ms per image of "
             "each server's whole process tree (Triton's: PyTriton's process with the callables, tritonserver, a Python backend "
             "stub per instance), the load generator's not included.", "",
             agreement_text(results.get("top1_agreement") or {}), ""]
    concurrency = results["protocol"]["concurrency"]
    for per_request in found["images_per_request"]:
        rows = []
        for row in results.get("peer_comparison", []):
            if row["images_per_request"] == per_request:
                ours, theirs = row["service"], row["triton"]
                rows.append([str(row["concurrency"]), fixed(ours["images_per_s"]), fixed(theirs["images_per_s"]), fixed(row["ratio"], 2, "x"),
                             row["configuration"], fixed(ours["p50_ms"]), fixed(theirs["p50_ms"]), fixed(ours["p99_ms"]), fixed(theirs["p99_ms"]),
                             f"{ours['errors']} / {theirs['errors']}", fixed(ours["cpu_ms_per_image"], 2), fixed(theirs["cpu_ms_per_image"], 2)])
        every = []
        for config in found["configurations"]:
            cells = [config["label"]]
            for c in concurrency:
                level = levels.find(config, c, per_request)
                mean_batch = (level or {}).get("server", {}).get("mean_batch")
                cells.append("-" if level is None else
                             f"{level['images_per_s']:.1f}, {fixed(level['latency_ms']['p50'], 0)} / {fixed(level['latency_ms']['p99'], 0)} ms, "
                             f"{peer.cpu_ms_per_image(level):.1f} ms CPU" + (f", batch {mean_batch:.1f}" if mean_batch else "")
                             + (f", {level['errors']} errors" if level["errors"] else ""))
            every.append(cells)
        parts += [f"### {per_request} image{'s' if per_request > 1 else ''} per request", "",
                  _table(["clients", "service images/s", "Triton images/s", "service / Triton", "Triton's best configuration",
                          "service p50 ms", "Triton p50 ms", "service p99 ms", "Triton p99 ms", "errors (service / Triton)",
                          "service CPU ms/image", "Triton CPU ms/image"], rows), "",
                  "Every Triton configuration: images/s, p50 / p99 ms, CPU ms per image, mean batch (Triton's /metrics):", "",
                  _table(["configuration"] + [verdicts.clients(c) for c in concurrency], every), ""]
    return parts


def agreement_text(agreement: dict) -> str:
    if not agreement.get("files"):
        return "Top-1 class: not compared (no answers from the service)."
    if agreement["same"]:
        count = agreement["configurations"]
        which = f"each of the {count} Triton configurations" if count > 1 else "the Triton configuration"
        return f"Top-1 class: the same from the service and from {which} on every one of the {agreement['files']} files."
    differ = agreement["different"]
    listed = "; ".join(f"{d['file']} (service {d['service']}, Triton {d['triton']}: {d['configuration']})" for d in differ[:10])
    return (f"Top-1 class: **not the same on every file**: {len(differ)} answer(s) differ of {agreement['files']} files x "
            f"{agreement['configurations']} configurations: {listed}" + (" ..." if len(differ) > 10 else "") + ".")


def _parts_alone(results: dict) -> list[str]:
    parts = ["## The parts alone", ""]
    if results.get("engine"):
        e = results["engine"]
        parts += [f"Engine: ONNX Runtime {e['provider']}, {e['threads']} intra-op threads, on preprocessed tensors.", "",
                  _table(["batch", "images/s", "ms per batch (p50)", "p99", "threads (the faster)", "CPU ms per image",
                          "others' cores"],
                         [[str(b["batch_size"]), fixed(b["images_per_s"]), fixed(b["latency_ms"]["p50"], 2), fixed(b["latency_ms"]["p99"], 2),
                           str(b["threads"]), fixed(b["cpu_ms_per_image"], 2), fixed(b.get("other_processes_cores"), 1)]
                          for b in e["batches"]]), ""]
    if results.get("decode"):
        d = results["decode"]
        parts += [f"Decode (read, decode, orient, resize; service.imaging.preprocess): {fixed(d['latency_ms']['p50'], 2)} ms per image "
                  f"p50 ({fixed(d['latency_ms']['p95'], 2)} p95) on one thread, {fixed(d['images_per_s'], 0)} images/s on "
                  f"{d['threads']} threads, {fixed(d['cpu_ms_per_image'], 2)} ms CPU per image (others' cores "
                  f"{fixed(d.get('other_processes_cores'), 1)}).", ""]
    if results.get("floor"):
        parts += ["Framework floor (BentoML, same upload, constant answer):", "",
                  _table(["clients x images", "requests/s", "images/s", "p50 ms", "p99 ms", "errors", "server CPU ms/request",
                          "load generator CPU ms/request"],
                         [[f"{l['concurrency']} x {l['images_per_request']}", fixed(l["requests_per_s"]), fixed(l["images_per_s"]),
                           fixed(l["latency_ms"]["p50"]), fixed(l["latency_ms"]["p99"]), str(l["errors"]),
                           fixed(sum(l["server_cpu_ms_per_request"].values()), 2), fixed(l["client_cpu_ms_per_request"], 2)]
                          for l in results["floor"]["levels"]]), ""]
    return parts


def _time_section(results: dict) -> list[str]:
    parts = ["## Where a request's time goes", "", "![where the time goes](time.png)", ""]
    service = results.get("service") or {}
    budget = verdicts.one_client_budget(results)
    if not budget["missing"]:
        parts += [f"One client, one image: p50 {budget['p50']:.1f} ms = engine batch-1 {budget['engine']:.1f} + decode "
                  f"{budget['decode']:.1f} + floor {budget['floor']:.1f} + {budget['p50'] - budget['budget']:.1f} ms more "
                  f"(batching, threads, serialisation).", ""]
    elif budget["p50"] is not None:
        parts += [f"One client, one image: p50 {budget['p50']:.1f} ms (not split: no " + ", ".join(budget["missing"]) + ").", ""]
    rows = []
    for level in service.get("levels", []):
        split = costs.latency_breakdown(level) if not level["errors"] else None  # an overloaded level's means say little
        if split:
            rows.append([f"{level['concurrency']} x {level['images_per_request']}", fixed(level["latency_ms"]["mean"])]
                        + [fixed(v) for v in split.values()])
    if rows:
        names = list(costs.latency_breakdown(next(l for l in service["levels"] if costs.latency_breakdown(l))).keys())
        parts += ["Mean latency (ms) by where it went, from the service's /metrics over each window:", "",
                  _table(["clients x images", "mean", *names], rows), ""]
    rows = []
    for level in service.get("levels", []):
        used, parts_alone = costs.cpu_per_image(results, level)
        rows.append([f"{level['concurrency']} x {level['images_per_request']}", *(fixed(v, 2) for v in used.values()),
                     fixed(sum(used.values()), 2), *(fixed(v, 2) for v in parts_alone.values()),
                     fixed(sum(parts_alone.values()), 2) if parts_alone else "-"])
    if rows:
        used, parts_alone = costs.cpu_per_image(results, service["levels"][0])
        parts += ["CPU time per image (ms), all cores together: the service's processes, and the same work done by the "
                  "parts alone (engine at the level's batch, decode, the floor's server and load generator at the same "
                  "level). The difference is what the service adds: batching, threads, serialisation.", "",
                  _table(["clients x images", *used, "service total", *(f"alone: {k}" for k in parts_alone),
                          "parts alone total"], rows), ""]
    return parts


def _loadgen_section(results: dict) -> list[str]:
    floor = (results.get("floor") or {}).get("levels", [])
    if not floor:
        return []
    busiest = max(floor, key=lambda l: l["requests_per_s"])
    client = busiest["client_cpu_ms_per_request"] or 0.0
    server = sum(busiest["server_cpu_ms_per_request"].values())
    return ["## The load generator", "",
            f"asyncio + aiohttp, one connection per client, bodies encoded before the run. At the floor's busiest level "
            f"({busiest['concurrency']} clients x {busiest['images_per_request']} images, {busiest['requests_per_s']:.0f} requests/s) "
            f"it used {client:.2f} ms CPU per request ({busiest['client_cpu_share']:.0%} of one core), "
            f"{client / server:.0%} of the {server:.2f} ms the floor server used: it is part of the floor it measures, "
            f"and not its bottleneck." if server else "", ""]


def plot_legend(results: dict) -> str:
    """What the plots' short names stand for, for the Markdown under them."""
    names = [f"**{s['name']}**: {s['label']}" for s in figures.setups(results)]
    return "Plot labels: " + "; ".join(names) + "." if names else ""
