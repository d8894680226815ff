"""A process's CPU priority: ``actor.sim_nice`` makes a simulated robot's actor nicer.

On Linux the nice value is a per-thread attribute: ``os.nice`` changes the calling thread's
alone, and a thread or child process takes its creator's. So ``lower_priority`` sets it on
every thread the process has (``/proc/self/task``); what they start later inherits it.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_NICE = 19


def lower_priority(increment: int) -> int:
    """Add ``increment`` (0 to 19) to the nice value of every thread of this process (capped
    at 19); returns the calling thread's new nice value. ValueError outside 0 to 19."""
    if not 0 <= increment <= MAX_NICE:
        raise ValueError(f"a nice increment is 0 to {MAX_NICE}, got {increment}")
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # not Linux: the process's own value
        return os.nice(increment)
    for tid in os.listdir(tasks):
        try:
            now = os.getpriority(os.PRIO_PROCESS, int(tid))
            os.setpriority(os.PRIO_PROCESS, int(tid), min(MAX_NICE, now + increment))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)
