"""Accuracy through the service: every test image over HTTP, against the offline evaluation.

    python -m loadtests.accuracy --data DIR --mnist mnist.npz [--models-dir models] [--report docs/results.md]

Serves the reproduction's models (`python -m training reproduce`) with `bentoml serve`, sends every
test image of each model's dataset to POST /classify (16 images a request, a few requests at a
time), and compares the accuracy and confusion matrix with the model's offline evaluation
(evaluation.json, computed by Keras on the same files). They must agree to within 0.2 percentage
points; a larger difference is a bug. The figures and the training records of the manifests go
into the results table of docs/results.md (between its markers; the rest of the page is prose
kept as it is) and docs/results/results.json. A rung measured now replaces its row; the rungs not
measured in this run keep the rows of their last measurement (results.json keeps each row with the
date and commit it was measured at), so the rungs can be trained and measured one at a time.
No TensorFlow here: MNIST digits are sent as PNG files.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from loadtests.servers import serve_env, serving
from training.ladder import RUNGS

TOLERANCE_PP = 0.2
CHUNK = 16
CONCURRENCY = 4
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


def folder_images(root: Path, classes: list[str]) -> list[tuple[str, bytes]]:
    """(true label, file bytes) of every test image, in the order training reads them."""
    items = []
    for label in classes:
        for path in sorted((root / "test" / label).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                items.append((label, path.read_bytes()))
    return items


def mnist_images(npz: Path) -> list[tuple[str, bytes]]:
    with np.load(npz) as data:
        x, y = data["x_test"], data["y_test"]
    items = []
    for pixels, label in zip(x, y):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        items.append((str(int(label)), buffer.getvalue()))
    return items


def classify_all(url: str, model: str, items: list[tuple[str, bytes]]) -> tuple[list[str], int]:
    """Predicted labels of every item (in order) and the number of failed requests."""
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]

    def send(chunk):
        files = [("images", (f"{i}.img", data)) for i, (_, data) in enumerate(chunk)]
        try:
            response = requests.post(f"{url}/classify", files=files, data={"model": model}, timeout=300)
        except requests.RequestException:
            return None
        return [answer["label"] for answer in response.json()] if response.status_code == 200 else None

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(send, chunks))
    predicted, failures = [], 0
    for chunk, labels in zip(chunks, answers):
        if labels is None:
            failures += 1
            labels = [None] * len(chunk)
        predicted.extend(labels)
    return predicted, failures


def confusion(true: list[str], predicted: list[str | None], classes: list[str]) -> list[list[int]]:
    index = {label: i for i, label in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(true, predicted):
        if p is not None:
            matrix[index[t], index[p]] += 1
    return matrix.tolist()


def measure(models_dir: Path, data: Path, mnist: Path | None, names: list[str], bentoml_home: str | None,
            log_dir: Path) -> list[dict]:
    manifests = {name: json.loads((models_dir / name / "manifest.json").read_text()) for name in names}
    env = serve_env(Path(bentoml_home) if bentoml_home else None,
                    SERVICE_MODELS=",".join(names), SERVICE_DEFAULT_MODEL=names[0],
                    SERVICE_MAX_IMAGES_PER_REQUEST=str(CHUNK))
    results = []
    with serving(env, log_dir / "accuracy-server.log") as server:
        served = {m["name"]: m for m in requests.get(f"{server.url}/models", timeout=30).json()["models"]}
        for name in names:
            manifest = manifests[name]
            if manifest["dataset"]["kind"] == "mnist":
                if mnist is None:
                    print(f"{name}: skipped (no --mnist)")
                    continue
                items = mnist_images(mnist)
            else:
                items = folder_images(data, manifest["classes"])
            true = [label for label, _ in items]
            predicted, failures = classify_all(server.url, name, items)
            evaluation = json.loads((models_dir / name / "evaluation.json").read_text())
            served_accuracy = float(np.mean([t == p for t, p in zip(true, predicted)]))
            matrix = confusion(true, predicted, manifest["classes"])
            results.append({
                "name": name, "version": served[name]["version"], "images": len(items), "failed_requests": failures,
                "service_accuracy": served_accuracy, "offline_accuracy": evaluation["accuracy"],
                "difference_pp": 100 * (served_accuracy - evaluation["accuracy"]),
                "service_confusion_matrix": matrix, "offline_confusion_matrix": evaluation["confusion_matrix"],
                "manifest": manifest,
            })
            print(f"{name}: {len(items)} images, through the service {served_accuracy:.2%}, "
                  f"offline {evaluation['accuracy']:.2%}, failed requests {failures}")
    return results


def _row(result: dict, seed_names: dict) -> str:
    m = result["manifest"]
    base = m.get("base")
    base_text = "none" if not base else f"MobileNetV2 {base['alpha']:g} ({base['weights']})" if base["architecture"] == "mobilenet_v2" else base["architecture"]
    if base and base.get("unfrozen_layers"):
        base_text += f", last {base['unfrozen_layers']} layers unfrozen"
    # A model that is no rung of the seed's table (a user's own) gets a row of its own, no seed figure.
    what, seed = seed_names.get(result["name"], ("model", None))
    seed_text = f"{seed:.1%}" if seed is not None else "-"
    t, p = m["training"], m["parameters"]
    parity = m.get("export", {}).get("parity", {}).get("max_abs_diff_probabilities")
    parity_text = f"{parity:.1e}" if parity is not None else "not exported"
    kept = f"best {t['best_epoch']}" if t["best_epoch"] else "last kept"
    agree = "agrees" if abs(result["difference_pp"]) <= TOLERANCE_PP and result["failed_requests"] == 0 else "**DISAGREES**"
    if result["service_confusion_matrix"] == result["offline_confusion_matrix"]:
        agree += ", same confusion matrix"
    return (f"| {what} (`{result['name']}`) | {seed_text} | **{result['offline_accuracy']:.2%}** | {result['service_accuracy']:.2%} "
            f"({result['difference_pp']:+.2f} pp, {agree}) | {t['epochs_run']} ({kept}) | {t['seconds'] / 60:.1f} min "
            f"| {p['total']:,} / {p['trainable']:,} | {base_text} | {parity_text} |")


def _commit() -> str | None:
    """The checked-out commit the measurement ran on, "-dirty" when the work tree had changes (None
    outside a git checkout)."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _record(result: dict, seed_names: dict, measured_on: str, commit: str | None) -> dict:
    """What results.json keeps of one measurement: the figures, the rendered row, when and where."""
    manifest = result["manifest"]
    return ({k: v for k, v in result.items() if k != "manifest"}
            | {"training": manifest["training"], "parameters": manifest["parameters"],
               "row": _row(result, seed_names), "measured_on": measured_on, "commit": commit})


def merge(previous: list[dict], records: list[dict]) -> list[dict]:
    """The rungs measured now, and the earlier rows of the others, in the ladder's order."""
    order = [rung.name for rung in RUNGS]
    by_name = {r["name"]: r for r in previous if "row" in r}
    by_name.update({r["name"]: r for r in records})
    return sorted(by_name.values(), key=lambda r: (order.index(r["name"]) if r["name"] in order else len(order), r["name"]))


def write_report(results: list[dict], report: Path, *, commit: str | None = None) -> None:
    """Write the table: these results, and the earlier rows of rungs not measured now."""
    seed_names = {rung.name: (rung.seed_name, rung.seed_accuracy) for rung in RUNGS}
    figures = report.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    raw_path = figures / "results.json"
    previous = json.loads(raw_path.read_text()) if raw_path.is_file() else []
    today = datetime.date.today().isoformat()
    records = merge(previous, [_record(r, seed_names, today, commit) for r in results])
    for r in results:
        source = Path(r["model_dir"]) / "curves.png"
        if source.is_file():
            with Image.open(source) as img:
                img.convert("RGB").resize((img.width // 2, img.height // 2), Image.LANCZOS).save(
                    figures / f"{r['name']}-curves.png", optimize=True)
    lines = [
        MARK_START,
        "| rung | seed documents | our test accuracy (offline, Keras) | through the HTTP service | epochs | training time "
        "| parameters (total / trainable) | base | ONNX parity, max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [r["row"] for r in records]
    lines.append("")
    lines.append("Measured: " + "; ".join(
        f"`{r['name']}` {r['measured_on']}" + (f" at {r['commit']}" if r.get("commit") else "")
        for r in records) + ".")
    lines.append("")
    lines.append("Training and validation curves (accuracy, loss; the dotted line marks the epoch kept):")
    lines.append("")
    lines += [f"![{r['name']}](results/{r['name']}-curves.png)" for r in records if (figures / f"{r['name']}-curves.png").is_file()]
    lines.append(MARK_END)
    block = "\n".join(lines)
    text = report.read_text() if report.is_file() else f"# Results\n\n{MARK_START}\n{MARK_END}\n"
    head, _, rest = text.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    report.write_text(head + block + tail)
    raw_path.write_text(json.dumps(records, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="cats_vs_dogs_small (its test/ split is sent)")
    parser.add_argument("--mnist", type=Path, help="mnist.npz (its test split is sent)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="(default: %(default)s)")
    parser.add_argument("--models", default=",".join(rung.name for rung in RUNGS), help="(default: %(default)s)")
    parser.add_argument("--report", type=Path, default=Path("docs/results.md"), help="(default: %(default)s)")
    parser.add_argument("--bentoml-home", help="model store (default: BENTOML_HOME or ~/bentoml)")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    missing = [n for n in names if not (args.models_dir / n / "manifest.json").is_file()]
    if missing:
        print(f"error: not trained yet: {', '.join(missing)} (run python -m training reproduce first)", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="accuracy-"))
    try:
        results = measure(args.models_dir, args.data, args.mnist, names, args.bentoml_home, log_dir)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    for r in results:
        r["model_dir"] = str(args.models_dir / r["name"])
    write_report(results, args.report, commit=_commit())
    bad = [r["name"] for r in results if abs(r["difference_pp"]) > TOLERANCE_PP or r["failed_requests"]]
    print(f"report written to {args.report}" + (f"; service and offline disagree for {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
