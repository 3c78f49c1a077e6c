"""`benchmarks/gpu.py --dry-run`: the GPU check's whole harness on this CPU with tiny shapes, so the
script that gets a few minutes of a GPU has run every line of its own code before it gets there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_gpu_check_runs_dry_on_a_cpu(tmp_path):
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: JSON lines and nothing else
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    checks = [r["check"] for r in rows]
    assert checks == ["env", "decisions", "matmul", "train", "sdpa", "fp16", "decode", "ddp", "user", "summary"]
    for row in rows[:-1]:
        assert row["pass"] is True and row["rule"], row
    by = {r["check"]: r for r in rows}
    assert by["decisions"]["mfu_scale"] == 1.0
    assert by["decisions"]["gpt2_tokens_per_step_on_1_8_16"] == [491_520] * 3
    assert by["train"]["compiled"]["graph_breaks"] == 0 and by["train"]["compiled"]["compiled"]
    assert by["decode"]["recompiles"] == 0 and by["decode"]["greedy_equal_prefix"] == by["decode"]["tokens"]
    assert by["ddp"]["grad_accum"] == 2 and by["ddp"]["plain_names"]
