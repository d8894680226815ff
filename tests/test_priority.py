"""daydream.core.priority: every thread of the process runs nicer, those started later too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daydream.core.priority import lower_priority

CHILD = """
import json, os, threading
from daydream.core.priority import lower_priority

def nice_of(tid):
    return os.getpriority(os.PRIO_PROCESS, tid)

before, tids, go = os.getpriority(os.PRIO_PROCESS, 0), [], threading.Event()
def worker():
    tids.append(threading.get_native_id())
    go.wait()
early = threading.Thread(target=worker)
early.start()
while not tids:
    pass
now = lower_priority(4)
late = threading.Thread(target=worker)
late.start()
while len(tids) < 2:
    pass
print(json.dumps({"before": before, "now": now, "main": nice_of(0),
                  "early": nice_of(tids[0]), "late": nice_of(tids[1])}))
go.set()
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice: Linux")
def test_every_thread_runs_nicer_including_those_started_before_and_after():
    # in a child process: a nice value cannot be raised back, and this one runs the tests
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    got = json.loads(out.stdout)
    want = min(19, got["before"] + 4)
    assert got["now"] == got["main"] == got["early"] == got["late"] == want, got


@pytest.mark.parametrize("increment", [-1, 20])
def test_an_increment_outside_0_to_19_is_refused(increment):
    with pytest.raises(ValueError, match="a nice increment is 0 to 19"):
        lower_priority(increment)
