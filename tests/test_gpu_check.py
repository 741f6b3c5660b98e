"""The GPU check (tests/gpu_check.sh) runs on the CPU, so that no GPU minute is
spent on a typo: its dry run goes through every step, as the GPU machine will
(one command from the source tree, logs and a summary under $OUT)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import gpu_check

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_dry_run_passes_every_step(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)                    # the script finds minires itself, as on the GPU machine
    result = subprocess.run(["bash", str(ROOT / "tests" / "gpu_check.sh"), "--dry-run"], cwd="/",
                            env=env, capture_output=True, text=True, timeout=300)
    summary = (tmp_path / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stderr
    assert summary.startswith("gpu check DRY RUN on the CPU") and summary.endswith("ALL PASSED\n")
    for number, (name, *_) in enumerate(gpu_check.STEPS, 1):
        assert re.search(rf"^PASS {name} +\d+\.\d s ", summary, re.M), summary
        assert (tmp_path / f"{number}-{name}.log").stat().st_size > 0
    figures = dict(re.findall(r"^    (.+?): (.*)$", summary, re.M))
    checks = re.fullmatch(r"(\d+) of (\d+) passed \(float32, float64\)", figures["kernel checks"])
    assert checks and checks[1] == checks[2] and int(checks[2]) > 20, figures
    assert figures["predict.py classes as on the CPU"] == "yes"
    assert re.match(r"\d+ passed, \d+ skipped, \d+ deselected", figures["pytest"]), figures
    assert any(key.startswith("training step batch   1") for key in figures), figures


def test_a_failing_step_is_reported_and_the_next_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "STEPS", [("missing", 30, "a step that does not exist"),
                                             ("versions", 30, "versions")])
    assert gpu_check.run_all(tmp_path, dry_run=True, only=None) == 1
    summary = (tmp_path / "summary.txt").read_text()
    assert re.search(r"^FAIL \(exit 1\) missing ", summary, re.M), summary
    assert "KeyError: 'missing'" in (tmp_path / "1-missing.log").read_text()
    assert re.search(r"^PASS versions ", summary, re.M) and summary.endswith("FAILED: missing\n")
