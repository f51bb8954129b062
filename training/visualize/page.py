"""The report's one HTML page: every picture embedded (base64), so the file opens anywhere on its own."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #fafafa; margin: 0; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; background: #fff; }
h1 { margin-bottom: 0.2rem; } h1 small { color: #777; font-weight: normal; font-size: 60%; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
.meta, .note, footer { color: #555; } nav a { margin-right: 1rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #777; font-size: 85%; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { padding: 0.2rem 0.8rem; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child { text-align: left; }
.bar { display: inline-block; height: 0.7rem; background: #4878d0; vertical-align: middle; }
.predicted td { font-weight: bold; }
"""


@dataclass
class Section:
    anchor: str
    title: str
    note: str = ""
    pictures: list[Path] = field(default_factory=list)
    html_before: str = ""


def _img(path: Path, root: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(str(path.relative_to(root)) if path.is_relative_to(root) else path.name)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def probability_table(classes: list[str], probabilities, predicted: int) -> str:
    rows = []
    for index in sorted(range(len(classes)), key=lambda i: -probabilities[i]):
        p = float(probabilities[index])
        mark = ' class="predicted"' if index == predicted else ""
        rows.append(f'<tr{mark}><td>{html.escape(classes[index])}</td><td>{p:.1%}</td>'
                    f'<td><span class="bar" style="width:{p * 12:.2f}rem"></span></td></tr>')
    return "<table><tr><th>class</th><th>probability</th><th></th></tr>" + "".join(rows) + "</table>"


def metrics_tables(evaluation: dict | None, manifest: dict) -> str:
    if not evaluation:
        metrics = manifest.get("metrics") or {}
        if not metrics:
            return '<p class="note">No evaluation found (evaluation.json).</p>'
        return (f"<p>{html.escape(metrics.get('evaluated_on', 'test'))} accuracy {metrics['test_accuracy']:.1%}, "
                f"loss {metrics['test_loss']:.3f}</p>")
    summary = (f"<p>On the {html.escape(evaluation.get('evaluated_on', 'test'))} split ({evaluation['images']} images): "
               f"accuracy <b>{evaluation['accuracy']:.1%}</b>, loss {evaluation['loss']:.3f}.</p>")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m['precision']:.2f}</td><td>{m['recall']:.2f}</td>"
        f"<td>{m['f1']:.2f}</td><td>{m['support']}</td></tr>"
        for name, m in evaluation["per_class"].items())
    return summary + ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
                      f"{rows}</table>")


def write_page(path: Path, *, manifest: dict, image_name: str, sections: list[Section], written: str) -> None:
    """index.html under `path`'s folder, pictures given relative to it (or absolute, shown by file name)."""
    root = path.parent
    spec = manifest["input"]
    base = manifest.get("base") or {}
    facts = [f"recipe {manifest.get('recipe')}", f"input {spec['height']}x{spec['width']}x{spec['channels']}",
             f"{len(manifest['classes'])} classes: {', '.join(manifest['classes'])}"]
    if base:
        facts.append(f"pretrained base {base.get('architecture')} ({base.get('weights')} weights)")
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        note = f'<p class="note">{s.note}</p>' if s.note else ""
        pictures = "".join(_img(p, root) for p in s.pictures)
        body.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{note}{s.html_before}{pictures}</section>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(manifest['name'])}: inside the convnet</title><style>{STYLE}</style></head>
<body><main>
<h1>{html.escape(manifest['name'])} <small>inside the convnet, for {html.escape(image_name)}</small></h1>
<p class="meta">{html.escape('; '.join(facts))}</p>
<nav>{nav}</nav>
{''.join(body)}
<footer><p>Written by <code>python -m training visualize</code> on {html.escape(written)}.</p></footer>
</main></body></html>
"""
    path.write_text(page)
