"""How many CPUs other processes leave free: `gptkit sample`'s default thread count.

Decoding a token is a chain of small ops. On an idle 2-core machine two threads decode 10-75% faster
than one (the matrix-vector products are split across them, see `linear.Linear`); but when another
process keeps a core busy, every parallel op waits for the second thread to be scheduled and two
threads ran ~3x slower than one. So `gptkit sample` measures, over its own start-up (imports and
checkpoint loading, about a second), how busy the CPUs it may run on were with other processes'
work, and uses the ones left free. Standard library only: the first sample is taken before torch
is imported. Linux only (/proc/stat); elsewhere the answer is "unknown" and the caller decides.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

MIN_WINDOW = 0.2  # seconds: a shorter look at /proc/stat is noise (its counters tick every 10 ms)


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.monotonic()
    own: float  # this process's CPU seconds so far (user + system, all its threads)
    busy: float | None  # CPU seconds the allowed CPUs spent busy, from /proc/stat; None if unreadable
    cpus: int  # how many CPUs this process may run on


def allowed_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _busy_seconds(cpus: set[int], stat: str = "/proc/stat") -> float | None:
    """Busy time (everything but idle and iowait, steal included) summed over `cpus`."""
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, seen = 0, 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total += sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
        seen += 1
    return total / tick if seen else None


def sample() -> CpuSample:
    cpus = allowed_cpus()
    return CpuSample(time.monotonic(), time.process_time(), _busy_seconds(cpus), len(cpus))


def others_busy(before: CpuSample, after: CpuSample) -> float | None:
    """How many CPUs' worth of work other processes did between the samples; None if unknown."""
    window = after.wall - before.wall
    if before.busy is None or after.busy is None or window < MIN_WINDOW:
        return None
    theirs = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, theirs / window)


def free_cpus(before: CpuSample, after: CpuSample) -> int | None:
    """CPUs the other processes left free between the samples (at least 1), or None if unknown.

    A CPU counts as free when others used less than half of it on average.
    """
    others = others_busy(before, after)
    if others is None:
        return None
    return max(1, int(after.cpus - others + 0.5))
