"""benchmarks/data.py --dry-run: the data benchmark runs end to end on a few MB of the shipped corpora
(its figures are not checked here: speed lives in benchmarks/, measured by the lead on a quiet machine)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_data_benchmark_runs_on_a_few_megabytes():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data.py"), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [ln.split(":")[0].split()[0] for ln in lines[1:]] == ["tokenize", "train", "one", "50", "tiktoken"]
    assert lines[-1].endswith("ids identical: True") and "over the same on 1 MB" in lines[2]
