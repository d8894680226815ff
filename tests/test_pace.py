"""The training ratio's pace: how far the learner is behind, as the robots hear it."""

from __future__ import annotations

import time

from daydream.runtime.pace import PRETRAINING, PaceThread, RatioPace


def test_before_the_ratio_counts_robots_may_fill_the_prefill_then_wait_while_pretraining():
    pace = RatioPace(ratio=128, min_size=1000, batch_steps=512)
    assert pace.behind(inserted=600, updates=0) == 0
    assert pace.behind(inserted=1300, updates=0) == 300
    pace.pretraining = True
    assert pace.behind(inserted=1300, updates=5) == PRETRAINING


def test_behind_counts_the_learner_s_own_updates_from_where_the_ratio_started():
    pace = RatioPace(ratio=128, min_size=1000, batch_steps=512)  # an update pays for 4 steps
    pace.pretraining = True
    pace.start(sampled=128 * 1200, updates=100)  # start_ratio: the 1,200 stored steps owe nothing
    assert not pace.pretraining
    assert pace.behind(inserted=1200, updates=100) == 0
    assert pace.behind(inserted=1600, updates=100) == 400
    assert pace.behind(inserted=1600, updates=150) == 200
    assert pace.behind(inserted=1600, updates=250) == 0  # ahead is not negative
    assert RatioPace(0, 1000, 512).behind(10**6, 0) == 0  # ratio off: never behind


def test_the_pace_thread_tells_a_fresh_figure_many_times_a_second():
    told, inserted = [], [1000]
    pace = RatioPace(ratio=128, min_size=1000, batch_steps=512)
    pace.start(sampled=128 * 1000, updates=0)
    thread = PaceThread(pace, lambda: inserted[0], lambda: 0, told.append).start()
    try:
        time.sleep(0.3)
        inserted[0] = 1500  # the robots stored 500 more steps; the learner made no update
        deadline = time.monotonic() + 2.0
        while (not told or told[-1] != 500) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        thread.stop()
    assert told[0] == 0 and told[-1] == 500
    assert len(told) >= 4


def test_the_gateway_passes_on_the_pace_only_while_the_learner_keeps_telling_it(monkeypatch):
    from daydream.replay.service import ReplayService
    from daydream.wire import gateway as gateway_module

    now = [1000.0]
    monkeypatch.setattr(gateway_module.time, "monotonic", lambda: now[0])
    gateway = gateway_module.Gateway(ReplayService(1000), "tcp://127.0.0.1:*", curve=False)
    assert gateway.behind() == 0  # never told: robots do not wait
    gateway.set_pace(500)
    now[0] += gateway_module.PACE_FRESH_S - 1
    assert gateway.behind() == 500
    assert gateway._weights_info()["behind"] == 500
    now[0] += 2  # the learner has been silent too long: it is gone, robots go on
    assert gateway.behind() == 0 and gateway._weights_info()["behind"] == 0
