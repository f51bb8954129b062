"""deploy/prometheus/ checked by promtool (system tier: Debian's prometheus package provides it):
the config and rule files are valid, and alerts_test.yml's unit tests pass and test every alert
firing and not firing."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from loadtests.prometheus import CONFIG, PROMETHEUS_DIR, alert_rules, rule_files

pytestmark = pytest.mark.system

ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("promtool")
    assert executable, "promtool not found: install Debian's prometheus package (.ci/system-packages.txt)"
    return subprocess.run([executable, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


def test_config_and_rules_are_valid():
    for args in (("check", "config", str(CONFIG)), ("check", "rules", *map(str, rule_files()))):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert sorted(tests["rule_files"]) == sorted(path.name for path in rule_files())
    cases = [case for test in tests["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert set(alert_rules()) - firing == set(), "alerts never tested firing"
    assert set(alert_rules()) - silent == set(), "alerts never tested not firing"
    assert (firing | silent) - set(alert_rules()) == set(), "tests of alerts that do not exist"
