"""The serving requirements, from pyproject.toml: its core dependencies and its `serve` extra.

`python -m service.dependencies build/requirements-serve.txt` writes them as a pip requirements
file, which bentofile.yaml hands to `bentoml build`; the bento installs exactly these, and
pyproject.toml stays the one place where they are written. Self-references such as
`convnet-serving[runtime]` are expanded into that extra's requirements.

The container images install the same list from a wheelhouse (Makefile, `wheels-cpu`/`wheels-gpu`):
`--cpu` writes the CPU image's variant (ONNX Runtime's CPU build instead of onnxruntime-gpu, for
every platform), `--pin-installed bentoml` pins BentoML to the version that builds the bento here.
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_SELF_REFERENCE = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*\[([^\]]+)\]\s*$")
_NAME = re.compile(r"^\s*([A-Za-z0-9._-]+)")
# The CPU variant: ONNX Runtime's GPU build goes, its CPU build loses the markers that keep it off
# Linux x86-64 (where the GPU build is the default).
GPU_RUNTIME, CPU_RUNTIME = "onnxruntime-gpu", "onnxruntime"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return _normalize(match.group(1))


def serving_requirements(pyproject: Path = PYPROJECT, extra: str = "serve", *, cpu: bool = False) -> list[str]:
    """The core dependencies and `extra`, self-references expanded, in order, without repeats.

    `cpu`: ONNX Runtime's CPU build on every platform instead of onnxruntime-gpu (the CPU image)."""
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
    if cpu:
        if CPU_RUNTIME not in map(requirement_name, requirements):
            raise ValueError(f"{pyproject}: extra {extra!r} has no {CPU_RUNTIME} requirement to run on the CPU")
        requirements = [r.split(";", 1)[0].strip() if requirement_name(r) == CPU_RUNTIME else r
                        for r in requirements if requirement_name(r) != GPU_RUNTIME]
    return requirements


def pin_installed(requirements: list[str], names: list[str]) -> list[str]:
    """`requirements` with each of `names` pinned to the version installed here (name==version)."""
    pinned = list(requirements)
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ValueError(f"--pin-installed {name}: not installed here") from None
        at = [i for i, r in enumerate(pinned) if requirement_name(r) == _normalize(name)]
        if not at:
            raise ValueError(f"--pin-installed {name}: not one of the requirements")
        pinned[at[0]] = f"{name}=={version}"
        pinned = [r for i, r in enumerate(pinned) if i not in at[1:]]
    return pinned


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.dependencies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the requirements file to write (e.g. build/requirements-serve.txt)")
    parser.add_argument("--cpu", action="store_true",
                        help="ONNX Runtime's CPU build (onnxruntime) instead of onnxruntime-gpu: the CPU image's requirements")
    parser.add_argument("--pin-installed", action="append", default=[], metavar="NAME",
                        help="pin NAME to the version installed here (repeatable; the images pin bentoml)")
    args = parser.parse_args(argv)
    try:
        lines = pin_installed(serving_requirements(cpu=args.cpu), args.pin_installed)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    output = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# Generated from {PYPROJECT.name} by `python -m service.dependencies`; do not edit.\n"
                      + "\n".join(lines) + "\n")
    print(f"{output}: {len(lines)} requirements")


if __name__ == "__main__":
    main()
