"""The benchmark's report, written at the end of a run: bench.json, bench.md (loadtests/report_md.py)
and the figures (loadtests/figures.py) in the report folder, and the lines printed at the end. The
verdicts in them are loadtests/verdicts.py's, computed into the results by the run."""

from __future__ import annotations

import json
from pathlib import Path

from . import figures, report_md, verdicts


def write(results: dict, out: Path) -> list[Path]:
    """bench.md, bench.json and the figures in `out` (made if missing); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    images = figures.draw(results, out)
    md_path = out / "bench.md"
    md_path.write_text(report_md.markdown(results))
    return [md_path, json_path, *images]


def summary_lines(results: dict) -> str:
    """What a run prints at its end: a line per target, per level against Triton, per level of v2 against
    /classify, and whether the top-1 classes agreed."""
    lines = []
    for target in results.get("targets", []):
        verdict = target.get("verdict") or verdicts.VERDICTS[target["met"]]
        lines.append(f"{verdict.upper() if verdict == 'missed' else verdict:12s} {target['target']}: {target['measured']}")
    for row in results.get("peer_comparison", []):
        ours, theirs = row["service"], row["triton"]
        lines.append(f"{'vs Triton':12s} {row['concurrency']} clients x {row['images_per_request']} images: {report_md.fixed(row['ratio'], 2, 'x')} "
                     f"({ours['images_per_s']:.1f} vs {theirs['images_per_s']:.1f} images/s; {row['configuration']}), CPU "
                     f"{ours['cpu_ms_per_image']:.1f} vs {theirs['cpu_ms_per_image']:.1f} ms/image, p99 {report_md.fixed(ours['p99_ms'])} vs "
                     f"{report_md.fixed(theirs['p99_ms'])} ms, errors {ours['errors']} vs {theirs['errors']}")
    for row in results.get("protocols", []):
        lines.append(f"{'v2/classify':12s} {row['concurrency']} clients x {row['images_per_request']} images: {report_md.fixed(row['ratio'], 2, 'x')} "
                     f"({row['v2']['images_per_s']:.1f} vs {row['classify']['images_per_s']:.1f} images/s), errors "
                     f"{row['v2']['errors']} vs {row['classify']['errors']}")
    if results.get("top1_agreement"):
        lines.append(f"{'top-1':12s} " + report_md.agreement_text(results["top1_agreement"]).replace("**", ""))
    return "\n".join(lines)
