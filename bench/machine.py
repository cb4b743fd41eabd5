"""How busy the machine was with other work while a benchmark ran.

On a shared machine another process on the cores makes a multi-threaded kernel wait for its
descheduled threads, whole scheduler ticks at a time: a 10 us kernel then reads as several
milliseconds. A virtual machine's hypervisor taking a core for another guest ("steal" time)
does the same. The load average lags by a minute, so the benchmarks measure instead, over
their timed phase, the CPU time the whole machine spent or had stolen (/proc/stat) minus
their own process's.
"""

from __future__ import annotations

import os
import time

# Above this many cores of other work, timings with every core in use are not to be trusted.
BUSY_CORES = 0.1


def _machine_busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:  # kernels before 2.6.11 report no steal time
        fields += [0] * (8 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class OtherLoad:
    """``with OtherLoad() as load: ...``; then ``load.cores``: the average number of cores
    that other processes kept busy meanwhile (None where /proc/stat is not available)."""

    cores: float | None = None

    def __enter__(self):
        self._start = (time.perf_counter(), _machine_busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc):
        wall0, busy0, own0 = self._start
        busy1 = _machine_busy_seconds()
        if busy0 is not None and busy1 is not None:
            wall = time.perf_counter() - wall0
            self.cores = max(0.0, ((busy1 - busy0) - (_own_seconds() - own0)) / wall) if wall > 0 else 0.0
        return False

    def summary(self) -> str:
        if self.cores is None:
            return "other processes' CPU use: unknown (no /proc/stat)"
        verdict = "" if self.cores <= BUSY_CORES else "; multi-threaded timings are unreliable, rerun on idle cores"
        return f"other processes kept {self.cores:.2f} of {os.cpu_count()} cores busy during the timings{verdict}"
