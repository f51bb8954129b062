"""A real Prometheus scraping the service with the repository's own config and rules, and what the
monitoring files ask of it: every recording rule, alert and dashboard panel query, read from the
files themselves (deploy/prometheus/, deploy/grafana/).

  python -m loadtests.prometheus --service http://127.0.0.1:3000 --seconds 120 --plot reports/monitoring.png

scrapes a running service every second for --seconds (send it load meanwhile: `make locust`),
then draws every dashboard panel from Prometheus' answers (--answers keeps them as JSON;
--replot draws them again). The system tests use the same Prometheus class.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml

from .servers import REPO, free_port

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "imgcls.json"
JOB = "imgcls"


class PrometheusError(Exception):
    """Prometheus cannot be run or refused a query; the message is one line."""


def _rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads, as paths."""
    return [PROMETHEUS_DIR / name for name in yaml.safe_load(CONFIG.read_text())["rule_files"]]


def recording_rules() -> dict[str, str]:
    """Every recording rule of the rule files: record name -> expression."""
    return {rule["record"]: rule["expr"] for path in rule_files() for rule in _rules(path) if "record" in rule}


def alert_rules() -> dict[str, str]:
    """Every alert rule of the rule files: alert name -> expression."""
    return {rule["alert"]: rule["expr"] for path in rule_files() for rule in _rules(path) if "alert" in rule}


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    kind: str  # the panel's type: timeseries, stat, table
    legend: str
    expr: str


def dashboard_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every PromQL expression of the dashboard's panels (rows' nested panels included)."""
    def panels(items: list[dict]):
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    return [PanelQuery(panel["title"], panel["type"], target.get("legendFormat", ""), target["expr"])
            for panel in panels(json.loads(path.read_text())["panels"]) for target in panel.get("targets", [])]


def scrape_config(target: str, interval_s: float) -> dict:
    """prometheus.yml with the imgcls job pointed at `target` (host:port), scrape and rule
    evaluation every `interval_s`, and the rule files by absolute path."""
    config = yaml.safe_load(CONFIG.read_text())
    interval = f"{int(interval_s * 1000)}ms"
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(path) for path in rule_files()]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    job["static_configs"] = [{"targets": [target]}]
    return config


class Prometheus:
    """`prometheus` on a free local port with a temporary config and data folder, scraping `target`."""

    def __init__(self, target: str, *, interval_s: float = 1.0, binary: str = "prometheus") -> None:
        executable = shutil.which(binary)
        if executable is None:
            raise PrometheusError(f"{binary} not found: install Debian's prometheus package (.ci/system-packages.txt)")
        self._dir = Path(tempfile.mkdtemp(prefix="imgcls-prometheus-"))
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(target, interval_s)))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self._dir / "prometheus.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [executable, f"--config.file={self._dir / 'prometheus.yml'}", f"--storage.tsdb.path={self._dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}: {self.log()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {timeout} s: {self.log()[-3000:]}")

    def _api(self, path: str, **params) -> dict | list:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's vector: [{"metric": {labels}, "value": [t, "v"]}, ...]."""
        data = self._api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """A range query's matrix: [{"metric": {labels}, "values": [[t, "v"], ...]}, ...]."""
        return self._api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def rules(self) -> list[dict]:
        """The rules Prometheus loaded, with their health and last error."""
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict]:
        return self._api("targets")["activeTargets"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def scraping(target: str, *, interval_s: float = 1.0):
    """A ready Prometheus scraping `target` (host:port) for the `with` block, stopped after it."""
    prometheus = Prometheus(target, interval_s=interval_s)
    try:
        prometheus.wait_ready()
        yield prometheus
    finally:
        prometheus.stop()


# --- the plot of docs/monitoring.md ------------------------------------------------------------------


def collect(prometheus: Prometheus, start: float, end: float, step: float = 2.0) -> dict:
    """Prometheus' answers to every dashboard query over [start, end]: what plot_dashboard draws."""
    return {"start": start, "end": end, "step": step, "panels": [
        {"panel": q.panel, "kind": q.kind, "legend": q.legend, "expr": q.expr,
         "series": prometheus.query_range(q.expr, start, end, step)} for q in dashboard_queries()]}


def plot_dashboard(answers: dict, out: Path) -> None:
    """Every dashboard panel drawn from `answers` (collect), one subplot a panel; a table panel as a table."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_panel: dict[str, list[dict]] = {}
    for answer in answers["panels"]:
        by_panel.setdefault(answer["panel"], []).append(answer)
    columns = 2
    rows = -(-len(by_panel) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(13, 3.1 * rows), squeeze=False)
    for ax, (title, panel) in zip(axes.flat, by_panel.items()):
        ax.set_title(title, fontsize=10)
        series = [(_legend(a["legend"], s["metric"]), [float(t) - answers["start"] for t, _ in s["values"]],
                   [float(v) for _, v in s["values"]]) for a in panel for s in a["series"]]
        if panel[0]["kind"] == "table":
            _table(ax, [s["metric"] for a in panel for s in a["series"]])
            continue
        # Series with no value, and all-zero ones beside others (status classes, reasons that never came), only clutter.
        series = [s for s in series if any(math.isfinite(v) for v in s[2])]
        if any(any(v for v in s[2]) for s in series):
            series = [s for s in series if any(s[2])]
        for label, times, values in series:
            ax.plot(times, values, label=label, linewidth=1.2)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(by_panel):]:
        ax.set_visible(False)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)


def _table(ax, rows: list[dict[str, str]]) -> None:
    columns = sorted({k for row in rows for k in row} - {"__name__", "job", "instance"})
    ax.axis("off")
    if rows:
        table = ax.table(cellText=[[row.get(c, "") for c in columns] for row in rows], colLabels=columns, loc="center")
        table.set_fontsize(9)


def _legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        return ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("__name__", "job", "instance"))
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.prometheus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", default="http://127.0.0.1:3000", help="the running service's URL (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=120, help="how long to scrape before plotting (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=Path("reports/monitoring.png"), help="the PNG to write (default: %(default)s)")
    parser.add_argument("--answers", type=Path, default=None,
                        help="also write Prometheus' answers (JSON) here; with --replot, read them from here instead")
    parser.add_argument("--replot", action="store_true", help="draw --plot from --answers; no Prometheus, no service")
    args = parser.parse_args(argv)
    if args.replot:
        if args.answers is None or not args.answers.is_file():
            raise SystemExit("error: --replot needs --answers FILE, written by an earlier run")
        plot_dashboard(json.loads(args.answers.read_text()), args.plot)
        print(f"wrote {args.plot}")
        return
    target = urlparse(args.service).netloc
    if not target:
        raise SystemExit(f"error: --service {args.service!r} is not a URL like http://127.0.0.1:3000")
    try:
        with scraping(target) as prometheus:
            start = time.time()
            print(f"prometheus {prometheus.url} scraping {target} every second for {args.seconds:g} s")
            time.sleep(args.seconds)
            answers = collect(prometheus, start, time.time())
    except PrometheusError as err:
        raise SystemExit(f"error: {err}") from None
    if args.answers is not None:
        args.answers.parent.mkdir(parents=True, exist_ok=True)
        args.answers.write_text(json.dumps(answers))
    plot_dashboard(answers, args.plot)
    print(f"wrote {args.plot}" + (f" and {args.answers}" if args.answers else ""))


if __name__ == "__main__":
    main()
