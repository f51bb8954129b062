"""The three rooms import in one direction: loadtests/ -> training/ -> service/ (docs/architecture.md).

service/ is what is served: it imports neither of the others, nor TensorFlow. training/ writes the
model packages the service reads and may use the service's rules for them (service.package),
never the benchmark's code. Read from the source files, not by importing them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What each room may not import: the rooms above it, and for the service, TensorFlow and Keras.
FORBIDDEN = {
    "service": {"training", "loadtests", "tensorflow", "keras", "tf2onnx"},
    "training": {"loadtests"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, at its top or inside functions (relative imports excluded)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from loadtests.servers import serving\n    import tensorflow as tf\n")
    assert imported_packages(module) == {"os", "loadtests", "tensorflow"}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_above_it(room):
    offenders = {f"{path.relative_to(REPO)}: {', '.join(sorted(bad))}"
                 for path in sorted((REPO / room).rglob("*.py"))
                 if (bad := imported_packages(path) & FORBIDDEN[room])}
    assert not offenders, offenders
