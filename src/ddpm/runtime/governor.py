"""Threads that follow the machine: torch's CPU thread count kept at the cores other programs leave free.

On a laptop something else always runs.  With as many OpenMP threads as cores, one other CPU-bound program makes
our threads wait for each other at every operator's barrier: on 2 cores the digits training step ran 3.7x slower
(benchmarks/busy_machine.py; docs/performance.md, "Threads on a busy machine"), while one thread would have lost
almost nothing.  On an idle machine every core is worth having.  :class:`ThreadGovernor` looks, every
``window_s`` seconds of work, at how much CPU time the other processes took on the cores this process may use
(``/proc/stat``, per core, minus this process's own CPU time) and sets ``torch.set_num_threads`` to the cores left
free: all of them when the machine is idle, fewer while a neighbour runs, all again when it stops.

The trainer calls :meth:`ThreadGovernor.tick` once per step and the samplers once per network call (it costs a
clock read between windows).  It is on by default for CPU work on Linux; ``DDPM_THREADS=N`` (or a set
``OMP_NUM_THREADS``) fixes the thread count instead, and ``DDPM_THREADS=auto`` is the default.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

__all__ = ["ThreadGovernor", "cpu_busy_seconds", "governor_for", "ENV"]

#: the environment variable: "auto" (the default) or a fixed thread count
ENV = "DDPM_THREADS"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy_seconds(cpus: set[int], stat: str = "/proc/stat") -> float | None:
    """CPU-seconds the given cores have spent busy since boot (user, nice, system, irq, softirq, steal), from
    ``/proc/stat``; None where that file cannot be read (not Linux)."""
    try:
        with open(stat) as f:
            lines = f.readlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            total += user + nice + system + irq + softirq + steal
    return total / _TICK


class ThreadGovernor:
    """Sets torch's intra-op thread count to the cores other programs leave free, re-measured every ``window_s``
    seconds (see the module docstring).  ``max_threads``: the most it ever uses (torch's count when it starts).
    ``busy_seconds``, ``own_seconds``, ``clock`` and ``set_threads`` are injectable for tests."""

    def __init__(self, max_threads: int | None = None, window_s: float = 2.0, cpus: set[int] | None = None,
                 busy_seconds: Callable[[], float | None] | None = None,
                 own_seconds: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.cpus = cpus if cpus is not None else _allowed_cpus()
        self.max_threads = max_threads or torch.get_num_threads()
        self.window_s = window_s
        self._busy = busy_seconds or (lambda: cpu_busy_seconds(self.cpus))
        self._own, self._clock, self._set = own_seconds, clock, set_threads
        self.threads = self.max_threads
        self.others = 0.0  # cores the other processes used in the last window
        self._start = self._sample()

    def _sample(self):
        return self._clock(), self._busy(), self._own()

    def tick(self) -> None:
        """Cheap between windows; at the end of one, measure the neighbours and set the thread count."""
        now = self._clock()
        t0, busy0, own0 = self._start
        if now - t0 < self.window_s:
            return
        t1, busy1, own1 = self._start = self._sample()
        if busy0 is None or busy1 is None:
            return
        self.others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        free = len(self.cpus) - self.others
        # a quarter of a core of slack: a neighbour that takes most of a core gets it to itself
        want = max(1, min(self.max_threads, int(free + 0.25)))
        if want != self.threads:
            self._set(want)
            self.threads = want


class _Fixed:
    """The governor of a fixed thread count (``DDPM_THREADS=N``, ``OMP_NUM_THREADS``, or a GPU): does nothing."""

    threads = None

    def tick(self) -> None:
        pass


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


_shared: ThreadGovernor | None = None


def governor_for(device: torch.device | str, environ=os.environ) -> ThreadGovernor | _Fixed:
    """The process's governor for work on ``device``: the one :class:`ThreadGovernor` for the CPU, unless the
    user fixed the thread count (``DDPM_THREADS=N``, which this applies, or ``OMP_NUM_THREADS``), the machine has
    no ``/proc/stat``, or the work runs on an accelerator; then one that does nothing."""
    global _shared
    choice = environ.get(ENV, "auto").strip().lower()
    if choice != "auto":
        try:
            n = int(choice)
        except ValueError:
            raise ValueError(f"{ENV}={environ[ENV]!r}: expected 'auto' or a whole number of threads") from None
        if n < 1:
            raise ValueError(f"{ENV}={n}: expected at least 1 thread")
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return _Fixed()
    if torch.device(device).type != "cpu" or "OMP_NUM_THREADS" in environ:
        return _Fixed()
    if _shared is None:  # made once per process; /proc/stat is probed only then
        if cpu_busy_seconds({0}) is None:
            return _Fixed()
        _shared = ThreadGovernor()
    return _shared
