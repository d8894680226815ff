"""Single-process training (``daydream train``): the robot actor and the learner in one process.

    RobotActor ──chunks──▶ InProcessLink ──add──▶ ReplayService (LOGDIR/replay)
        ▲  after every tick (robot paused):            │ sample (samples-per-insert)
        └───── weights ◀── Learner.train_owed() ◀──────┘

The same RobotActor, Learner, replay layout (``actor-0``'s stream, records with the
executed action and the intervention flag), seeding, counters, resume and episode
bookkeeping as ``daydream run``; only the link is in-process instead of ZeroMQ, and
the learner trains between two ticks instead of beside the robots. That needs a robot
that can wait between ticks: a simulated one (``Robot.simulated``). Rerunning with the
same logdir resumes: the agent, optimisers and counters from the checkpoint, the
experience from the replay files.
"""

from __future__ import annotations

import signal

from daydream.replay.service import ReplayService, replay_options
from daydream.runtime.learner import Learner
from daydream.runtime.links import InProcessLink
from daydream.runtime.robot_actor import RobotActor

ACTOR_ID = "actor-0"


class LocalRun:
    """Owns a single-process run: the in-process replay, the link, the learner, the robot actor."""

    def __init__(self, config, stream=None) -> None:
        self.config = config
        self.replay = ReplayService(**replay_options(config.replay, config.logdir, config.seed))
        self.link = InProcessLink(self.replay, ACTOR_ID)
        self.learner = Learner(config, self.replay, self.link, stream=stream, publish_every_s=0)
        self.actor = RobotActor(config, self.link.for_actor, ACTOR_ID, after_tick=self._tick)
        if not self.actor.robot.simulated:
            name = config.robot.name
            self.learner.close()
            raise ValueError(
                f"daydream train runs a simulated robot (robot '{name}' is real: it cannot wait "
                f"while the learner trains); run it with daydream learner + daydream actor, "
                f"or daydream run"
            )

    def _tick(self) -> None:
        self.learner.train_owed()
        # train.steps counts records, as the replay does (one per tick and one per episode
        # end); the actor closes its episode with one more record when it stops
        if self._start_steps + self.actor.records + 1 >= self.config.train.steps:
            self.actor.stop()

    def run(self) -> dict:
        """Train until ``train.steps`` environment steps. Ctrl-C and SIGTERM save a resumable
        checkpoint."""
        total = self.config.train.steps
        if self.learner.done:
            print(
                f"already trained for {self.learner.counters['env_steps']} >= {total} steps; "
                f"raise --steps to continue",
                flush=True,
            )
            self.learner.close()
            return dict(self.learner.counters)
        self._start_steps = self.learner.counters["env_steps"]
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if self.learner.agent.updates > 0:
                self.learner.publish()  # resumed: act with the trained policy at once
            self.actor.run()
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: saving checkpoint at step {self.learner.counters['env_steps']}",
                flush=True,
            )
            raise
        finally:
            self.learner.poll()  # count the last chunk and its episode reports
            self.learner.close()
            signal.signal(signal.SIGTERM, previous)
        return dict(self.learner.counters)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
