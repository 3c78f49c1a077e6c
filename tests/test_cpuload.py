"""`gptkit sample`'s default thread count: the CPUs other processes leave free while it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gptkit import cpuload
from gptkit.cpuload import CpuSample
from tests.conftest import run_cli

LINUX = os.path.exists("/proc/stat")


def test_free_cpus_counts_what_other_processes_use():
    start = CpuSample(wall=100.0, own=5.0, busy=50.0, cpus=2)
    # over 1 s we used 1 CPU-second ourselves; the CPUs were busy for 1.05 s in all: others ~idle
    assert cpuload.free_cpus(start, CpuSample(101.0, 6.0, 51.05, 2)) == 2
    # another process kept a whole CPU busy
    assert cpuload.free_cpus(start, CpuSample(101.0, 6.0, 52.0, 2)) == 1
    # both CPUs taken by others: still one thread
    assert cpuload.free_cpus(start, CpuSample(101.0, 5.0, 52.0, 2)) == 1
    assert cpuload.free_cpus(start, CpuSample(101.0, 6.0, 51.0, 8)) == 8
    # unknown: too short a look, or no /proc/stat
    assert cpuload.free_cpus(start, CpuSample(100.05, 5.0, 50.05, 2)) is None
    assert cpuload.free_cpus(CpuSample(100.0, 5.0, None, 2), CpuSample(101.0, 6.0, None, 2)) is None


def test_busy_seconds_reads_only_the_allowed_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 100 5000 0 0 0 0 0 0\n"
                    "cpu0 400 0 50 2500 20 0 0 10 0 0\n"
                    "cpu1 500 0 50 2500 0 0 0 0 0 0\n"
                    "intr 12345\nctxt 678\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert cpuload._busy_seconds({0}, str(stat)) == pytest.approx(460 / tick)  # iowait is idle, steal busy
    assert cpuload._busy_seconds({0, 1}, str(stat)) == pytest.approx(1010 / tick)
    assert cpuload._busy_seconds({5}, str(stat)) is None
    assert cpuload._busy_seconds({0}, str(tmp_path / "missing")) is None


@pytest.fixture
def busy_cpu():
    """Another process keeping one CPU busy."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    yield
    proc.kill()
    proc.wait()


@pytest.mark.skipif(not LINUX or len(cpuload.allowed_cpus()) < 2, reason="needs /proc/stat and 2 CPUs")
def test_a_busy_cpu_is_not_counted_free(busy_cpu):
    before = cpuload.sample()
    time.sleep(0.5)
    free = cpuload.free_cpus(before, cpuload.sample())
    assert free is not None and free <= len(cpuload.allowed_cpus()) - 1


@pytest.mark.skipif(not LINUX or len(cpuload.allowed_cpus()) < 2, reason="needs /proc/stat and 2 CPUs")
def test_sample_decodes_on_one_thread_beside_a_busy_process(trained_run, busy_cpu):
    """On 2 CPUs with one taken, two decoding threads ran ~3x slower than one: the default takes one."""
    proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "-n", "5", "-p", "A", "-v")
    assert proc.returncode == 0, proc.stderr
    threads = int(proc.stderr.split(" thread(s)")[0].rsplit("| ", 1)[1])
    assert 1 <= threads <= len(cpuload.allowed_cpus()) - 1
    forced = run_cli("sample", "-c", str(trained_run["run_dir"]), "-n", "5", "-p", "A", "-v", "--threads", "2")
    assert "| 2 thread(s)" in forced.stderr  # an explicit --threads is taken as given
