"""The demo's own base, pretrained in a process of its own (training/pretrain.py)."""

import json
from pathlib import Path

import pytest

from training.errors import UserError
from training.pretrain import LOG_FILE, RECORD_FILE, Pretraining, pretraining_data

pytestmark = pytest.mark.slow  # each test starts a Python with TensorFlow


def test_the_base_pretrains_in_a_process_of_its_own_and_says_what_it_learnt(tmp_path):
    data = pretraining_data(tmp_path / "shapes", per_class={"train": 2, "validation": 1}, seed=7, size_range=(40, 40))
    record = Pretraining(data, tmp_path / "base", image_size=(32, 32), epochs=1, batch_size=8).wait()
    assert Path(record["model"]).is_file() and record["epochs_run"] == 1
    assert record == json.loads((tmp_path / "base" / RECORD_FILE).read_text())
    assert len(record["classes"]) == 13 and 0 <= record["validation_accuracy"] <= 1
    assert "pretraining MobileNetV2 alpha 0.35 from random weights" in (tmp_path / "base" / LOG_FILE).read_text()


def test_a_failed_pretraining_says_why_in_one_line_and_where_its_output_is(tmp_path):
    pretraining = Pretraining(tmp_path / "nothing-here", tmp_path / "base", image_size=(32, 32), epochs=1)
    with pytest.raises(UserError) as raised:
        pretraining.wait()
    message = str(raised.value)
    assert message.startswith("pretraining the base failed (exit code 2): error: ") and "nothing-here" in message
    assert message.endswith(f"its output: {tmp_path / 'base' / LOG_FILE}") and "\n" not in message
