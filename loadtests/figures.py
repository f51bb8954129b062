"""The benchmark's figures, one function each: images/s (throughput.png), latency percentiles
(latency.png), and where a request's time and the cores go (time.png)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from . import components, costs, levels

# One colour per series in every figure; the compared setups take the next ones in turn.
COLORS = {"service": "tab:blue", "ceiling": "black", "engine": "tab:orange", "naive": "tab:red", "floor": "tab:gray"}
COMPARE_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
COMPARE_MARKERS = "vD<>p"
# latency.png: colour says the server, line style and marker the percentile.
PERCENTILES = (("p50", "-", "o"), ("p95", "--", "s"), ("p99", ":", "^"))

# Layout, in inches (saved at DPI dots per inch). throughput.png and latency.png have a panel per
# images per request, and the figure's legend right of the panels.
DPI = 110
PANEL_WIDTH, PANEL_HEIGHT = 5.2, 4.8
LEGEND_WIDTH = 2.5
# time.png: the latency split (left) and the CPU bars (right) side by side, 3 : 2.
TIME_SIZE = (13, 5.8)
TIME_WIDTH_RATIOS = [3, 2]
# The CPU panel's two bars at each level (the service, the parts alone): each BAR_WIDTH wide, its
# centre BAR_OFFSET from the level's, which leaves a sliver between them.
BAR_WIDTH = 0.4
BAR_OFFSET = 0.21
# time.png's legends stand under their panel, their top this far below the axes (in axes heights):
# under the tick labels, which are two lines in the CPU panel (service / alone, then the clients).
LEGEND_BELOW_SPLIT = -0.13
LEGEND_BELOW_CPU = -0.17
# Type sizes, in points.
TITLE_SIZE = 11
PANEL_TITLE_SIZE = 10
LEGEND_SIZE = 8.5
TIME_LEGEND_SIZE = 8
BAR_LABEL_SIZE = 7.5
CLIENTS_LABEL_SIZE = 10
GRID_ALPHA = 0.3


class _Bars(NamedTuple):
    """One of the CPU panel's bars at each level: which of costs.cpu_per_image's two splits."""
    split: int
    tick: str  # under the bar
    legend: str  # before each part's name in the legend
    offset: float
    colors: tuple[str, str, str]
    hatch: str


CPU_BARS = (_Bars(0, "service", "service: ", -BAR_OFFSET, ("tab:gray", "tab:orange", "tab:green"), ""),
            _Bars(1, "alone", "parts alone: ", BAR_OFFSET, ("tab:purple", "tab:olive", "tab:blue"), "//"))


def setups(results: dict) -> list[dict]:
    """The service setups measured, with their short names in the plots: "service" (--set's settings),
    then "compare 1", "compare 2" ... (each --compare), each with its full settings ("label")."""
    found = [{"name": "service", "label": results.get("settings_given", "defaults"), "levels": results["service"]["levels"],
              "color": COLORS["service"], "marker": "o"}] if results.get("service") else []
    for i, compared in enumerate(results.get("service_compared", [])):
        found.append({"name": f"compare {i + 1}", "label": compared["label"], "levels": compared["levels"],
                      "color": COMPARE_COLORS[i % len(COMPARE_COLORS)], "marker": COMPARE_MARKERS[i % len(COMPARE_MARKERS)]})
    return found


def draw(results: dict, out: Path) -> list[Path]:
    """Every figure the results make, in `out`; time.png only where the service's /metrics split its levels."""
    written = [throughput(results, out / "throughput.png"), latency(results, out / "latency.png")]
    split = time_split(results, out / "time.png")
    return written + ([split] if split else [])


def throughput(results: dict, path: Path) -> Path:
    """images/s against concurrency: the service setups, the ceiling, the engine alone, the naive server.
    Log y, so that the engine alone and the servers, far apart (docs/benchmarks.md has the figures), both read."""
    plt = _pyplot()
    concurrency = results["protocol"]["concurrency"]
    fig, axes = _panels(plt, results, sharey=True)
    for ax, per_request in zip(axes, results["protocol"]["images_per_request"]):
        for setup in setups(results):
            xs, measured = levels.of(setup["levels"], per_request)
            if measured:
                ax.plot(xs, [l["images_per_s"] for l in measured], marker=setup["marker"], color=setup["color"],
                        linestyle="-" if setup["name"] == "service" else "-.", label=setup["name"])
        xs, rows = levels.of(results.get("ceiling", []), per_request)
        if rows:
            ax.plot(xs, [r["ceiling_images_per_s"] for r in rows], "s--", color=COLORS["ceiling"], label="ceiling")
        if results.get("engine"):
            ax.plot(concurrency, [components.engine_at(results["engine"], c * per_request)["images_per_s"] for c in concurrency],
                    "^:", color=COLORS["engine"], label="engine alone")
        xs, measured = levels.of((results.get("naive") or {}).get("levels", []), per_request)
        if measured:
            ax.plot(xs, [l["images_per_s"] for l in measured], "x-", color=COLORS["naive"], label="naive Keras server")
        _log_panel(ax, concurrency, per_request)
    axes[0].set_ylabel("images/s (log scale)")
    fig.suptitle(f"images/s, {_title(results)}", fontsize=TITLE_SIZE)
    _figure_legend(fig, axes)
    return _save(fig, path)


def latency(results: dict, path: Path) -> Path:
    """p50, p95 and p99 against concurrency: the service setups, the floor, the naive server."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    concurrency = results["protocol"]["concurrency"]
    stages = [*setups(results), {"name": "floor", "levels": (results.get("floor") or {}).get("levels", []), "color": COLORS["floor"]},
              {"name": "naive", "levels": (results.get("naive") or {}).get("levels", []), "color": COLORS["naive"]}]
    fig, axes = _panels(plt, results)
    shown = []
    for ax, per_request in zip(axes, results["protocol"]["images_per_request"]):
        for stage in stages:
            xs, measured = levels.of(stage["levels"], per_request)
            if not measured:
                continue
            if stage["name"] not in shown:
                shown.append(stage["name"])
            for p, style, marker in PERCENTILES:
                ax.plot(xs, [l["latency_ms"][p] for l in measured], linestyle=style, marker=marker, markersize=4,
                        color=stage["color"], alpha=0.9)
        _log_panel(ax, concurrency, per_request)
        ax.set_ylabel("latency, ms (log scale)")
    colors = {s["name"]: s["color"] for s in stages}
    handles = [Line2D([], [], color=colors[name], linewidth=3, label=name) for name in shown]
    handles += [Line2D([], [], color="dimgray", linestyle=style, marker=marker, label=p) for p, style, marker in PERCENTILES]
    fig.legend(handles=handles, loc="outside right center", fontsize=LEGEND_SIZE)
    fig.suptitle(f"latency percentiles, {_title(results)}", fontsize=TITLE_SIZE)
    return _save(fig, path)


def time_split(results: dict, path: Path) -> Path | None:
    """The service's levels without errors whose /metrics split their latency: each level's mean
    latency by where it went (left), and CPU ms per image, the service's against the parts alone
    (right). None, and no file, where no level has the split."""
    split = [l for l in (results.get("service") or {}).get("levels", []) if costs.latency_breakdown(l) and not l["errors"]]
    if not split:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=TIME_SIZE, gridspec_kw={"width_ratios": TIME_WIDTH_RATIOS},
                                      layout="constrained")
    _latency_shares(left, split)
    _cpu_bars(right, results, [l for l in split if l["images_per_request"] == 1])
    return _save(fig, path)


def _latency_shares(ax, split: list[dict]) -> None:
    """Stacked bars: each level's mean latency, 100%, by where it went."""
    labels = [f"{l['concurrency']}x{l['images_per_request']}" for l in split]
    shares = [costs.latency_breakdown(l) for l in split]
    bottom = [0.0] * len(split)
    for name in shares[0]:
        values = [100 * s[name] / sum(s.values()) for s in shares]
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("% of the mean latency")
    ax.set_xlabel("clients x images per request")
    ax.set_title("Where a request's time goes (service /metrics)", fontsize=PANEL_TITLE_SIZE)
    ax.legend(fontsize=TIME_LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, LEGEND_BELOW_SPLIT), ncol=2)


def _cpu_bars(ax, results: dict, one: list[dict]) -> None:
    """Two stacked bars per level of 1 image per request: the CPU ms per image of the service's
    processes, and of the parts alone (CPU_BARS); a bar whose split is missing at a level is left out."""
    positions = list(range(len(one)))
    ticks, tick_labels = [], []
    for bars in CPU_BARS:
        splits = [costs.cpu_per_image(results, l)[bars.split] for l in one]
        if not all(splits):
            continue
        bottom = [0.0] * len(one)
        for name, color in zip(splits[0], bars.colors):
            values = [split[name] for split in splits]
            ax.bar([p + bars.offset for p in positions], values, width=BAR_WIDTH, bottom=bottom, color=color, hatch=bars.hatch,
                   edgecolor="white", label=bars.legend + name)
            bottom = [b + v for b, v in zip(bottom, values)]
        ticks += [p + bars.offset for p in positions]
        tick_labels += [bars.tick] * len(one)
    ax.set_xticks(ticks, tick_labels, fontsize=BAR_LABEL_SIZE)
    ax.set_xticks(positions, [f"\n{l['concurrency']}" for l in one], minor=True)
    ax.tick_params(axis="x", which="minor", length=0, labelsize=CLIENTS_LABEL_SIZE)
    ax.set_ylabel("CPU ms per image")
    ax.set_xlabel("clients (1 image per request)")
    ax.set_title("Where the cores go: the service vs the parts alone", fontsize=PANEL_TITLE_SIZE)
    ax.legend(fontsize=TIME_LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, LEGEND_BELOW_CPU), ncol=2)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(results: dict) -> str:
    return f"{results['model']['tag']} on {results['images']['label']} images"


def _panels(plt, results: dict, **options):
    """A figure with a panel per images per request (a row of axes) and room for the legend beside them."""
    count = len(results["protocol"]["images_per_request"])
    fig, axes = plt.subplots(1, count, figsize=(PANEL_WIDTH * count + LEGEND_WIDTH, PANEL_HEIGHT), squeeze=False,
                             layout="constrained", **options)
    return fig, axes[0]


def _log_panel(ax, concurrency: list[int], per_request: int) -> None:
    """A panel's axes: clients on a log-2 x, a log y labelled in plain numbers, its title, a grid."""
    _clients_axis(ax, concurrency)
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_title(f"{per_request} image{'s' if per_request > 1 else ''} per request", fontsize=PANEL_TITLE_SIZE)
    ax.grid(alpha=GRID_ALPHA, which="both")


def _log_axis(axis) -> None:
    """A log axis labelled in plain numbers at 1, 2, 5 x 10^n."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def _clients_axis(ax, concurrency: list[int]) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrency, [str(c) for c in concurrency])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("concurrent clients")


def _figure_legend(fig, axes) -> None:
    """One legend for the whole figure, right of the panels, each label once."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=LEGEND_SIZE)


def _save(fig, path: Path) -> Path:
    # bbox_inches="tight": the figure grows to hold legends placed outside the axes.
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
