"""A short rolling restart (system tier: Debian's haproxy): three replicas of a tiny model behind
haproxy under steady load, each replaced in turn with no failed request and a 0 exit status, then
one SIGKILLed and replaced (python -m loadtests.rollout; its full run is in docs/deployment.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from loadtests.servers import REPO, serve_env
from tests.service_helpers import RGB_MODEL, register

pytestmark = pytest.mark.system


def test_a_rolling_restart_loses_no_request_and_a_kill_is_replaced(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: .ci/run installs .ci/system-packages.txt")
    home = tmp_path / "home"
    register(RGB_MODEL, home)
    out = tmp_path / "rollout"
    command = [sys.executable, "-m", "loadtests.rollout", "--model", RGB_MODEL.name, "--limit", "4", "--rate", "15",
               "--settle-seconds", "3", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=serve_env(home))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    results = json.loads((out / "rollout.json").read_text())
    verdicts = {row["target"]: row for row in results["verdicts"]}
    assert verdicts["rolling restart: no failed request"]["met"] is True
    assert verdicts["every replaced replica exits 0 on SIGTERM"]["met"] is True
    exits = [event for event in results["events"] if "exit_code" in event]
    assert len(exits) == 3
    restarts = [row for row in results["phases"] if row["phase"] == "restart"]
    assert restarts and sum(row["requests"] for row in restarts) > 30 and all(row["failed"] == 0 for row in restarts)
    assert any("the pool is whole again" in event["event"] for event in results["events"])
    assert {"rollout.md", "rollout.png", "haproxy.cfg", "haproxy.log"} <= {path.name for path in out.iterdir()}
    assert "## Verdicts" in (out / "rollout.md").read_text()
