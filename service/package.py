"""The model package's rules that both halves apply: training/ writes packages by them, service/
reads and checks packages by them (docs/model-package.md). The standard library only."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MANIFEST = "manifest.json"
# Model names are BentoML tag names: lowercase letters, digits, '-', '_' and '.', starting alphanumeric.
MODEL_NAME = r"[a-z0-9][a-z0-9._-]*"
MODEL_NAME_RULE = "lowercase letters, digits, '-', '_' and '.'"


def is_model_name(text: str) -> bool:
    return re.fullmatch(MODEL_NAME, text) is not None


def sha256(path: Path) -> str:
    """The file's sha256, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
