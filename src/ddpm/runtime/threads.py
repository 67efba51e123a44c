"""The OpenMP wait policy, chosen before torch starts its thread pool.

torch's CPU kernels run on an OpenMP pool (GNU libgomp in the PyPI wheels).  Between two parallel regions its
idle threads spin for GOMP_SPINCOUNT iterations (300,000 by default) before they sleep.  On an idle machine that
spinning saves a wake-up per operator; on a busy one (a laptop is never idle) a spinning thread holds a core the
other program needs, while the thread that has work waits for a core: with one other CPU-bound program on two
cores the digits preset trained several times slower (docs/performance.md, "Threads on a busy machine").  A
shorter spin keeps the idle speed and gives the core back when there is a neighbour.

:func:`apply_default` sets ``GOMP_SPINCOUNT`` to :data:`DEFAULT_SPINCOUNT` unless the user chose a policy
(``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or Intel OpenMP's ``KMP_BLOCKTIME`` set in the environment); it is
called when ``ddpm`` is imported, which is before torch for the ``ddpm`` command.  A program that imports torch
before ddpm keeps torch's own policy.  This module must not import torch.
"""
from __future__ import annotations

import os

__all__ = ["DEFAULT_SPINCOUNT", "USER_POLICY_VARIABLES", "apply_default"]

#: libgomp spin iterations before an idle thread sleeps (benchmarks/busy_machine.py measured the choice)
DEFAULT_SPINCOUNT = "10000"
#: any of these in the environment means the user chose a policy, and ddpm leaves it alone
USER_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def apply_default(environ=os.environ) -> bool:
    """Set ddpm's default spin count in ``environ`` unless the user set a policy; returns whether it did."""
    if any(name in environ for name in USER_POLICY_VARIABLES):
        return False
    environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    return True
