"""The serving requirements, from pyproject.toml: its core dependencies and its `serve` extra.

`python -m service.dependencies build/requirements-serve.txt` writes them as a pip requirements
file, which bentofile.yaml hands to `bentoml build`; the bento installs exactly these, and
pyproject.toml stays the one place where they are written. Self-references such as
`convnet-serving[runtime]` are expanded into that extra's requirements.
"""

from __future__ import annotations

import re
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_SELF_REFERENCE = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*\[([^\]]+)\]\s*$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def serving_requirements(pyproject: Path = PYPROJECT, extra: str = "serve") -> list[str]:
    """The core dependencies and `extra`, self-references expanded, in order, without repeats."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    own_name = _normalize(project["name"])
    requirements: list[str] = []

    def add(requirement: str, seen: tuple[str, ...]) -> None:
        match = _SELF_REFERENCE.match(requirement)
        if match and _normalize(match.group(1)) == own_name:
            for name in (part.strip() for part in match.group(2).split(",")):
                if name in seen:
                    raise ValueError(f"{pyproject}: extra {name!r} includes itself")
                for inner in extras[name]:
                    add(inner, (*seen, name))
        elif requirement not in requirements:
            requirements.append(requirement)

    for requirement in project.get("dependencies", []):
        add(requirement, ())
    for requirement in extras[extra]:
        add(requirement, (extra,))
    return requirements


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m service.dependencies OUTPUT.txt\n{__doc__}")
    output = Path(sys.argv[1])
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = serving_requirements()
    output.write_text(f"# Generated from {PYPROJECT.name} by `python -m service.dependencies`; do not edit.\n"
                      + "\n".join(lines) + "\n")
    print(f"{output}: {len(lines)} requirements")


if __name__ == "__main__":
    main()
