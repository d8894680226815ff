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
    pace.start(sampled=128 * 1200, updates=100)  # as the replay counted when the ratio started
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


def test_a_robot_counts_its_own_steps_in_flight_only_while_the_learner_is_behind(tmp_path):
    import numpy as np

    from daydream.core.config import load_config
    from daydream.runtime.links import PACE_STALE_S, NetworkLink
    from daydream.runtime.robot_actor import PolicySlots

    config = load_config("configs/pendulum.yaml", overrides=[
        f"logdir={tmp_path}", "transport.curve=false", "actor.chunk_length=16"])  # fmt: skip
    link = NetworkLink(config, "tcp://127.0.0.1:9", "a", tmp_path, PolicySlots(lambda: None))
    try:
        chunk = {"x": np.zeros((16, 1), np.float32)}
        for _ in range(20):  # 20 chunks queued for the network thread, none acknowledged
            link.send_chunk(chunk)
        now = time.monotonic()
        link._behind = (10, now)
        assert link.behind() == 10 + 20 * 16
        link._behind = (0, now)  # the learner keeps up: a backlog alone is no reason to wait
        assert link.behind() == 0
        link._behind = (10, now - PACE_STALE_S - 1)  # not heard for too long: do not wait
        assert link.behind() == 0
    finally:
        link.client.close()
