"""The replay as a Ray actor: the one module of daydream that imports Ray.

    start_ray(num_cpus=2, object_store_mb=256)          # or start_ray(address="auto")
    replay = RemoteReplay.start(**replay_options(...))  # a threaded ReplayService actor
    replay = RemoteReplay.start("daydream_replay", ...)  # on a node declaring that resource
    batch = replay.sample(16, 64, timeout=0.5)          # None while the limiter says no
    ticket = replay.submit(items)                       # the gateway's pipelined adds
    replay.done([ticket])                               # -> [(ticket, results or error)]
    gateway = remote_class(Gateway).remote(replay, ...) # any class as a threaded Ray actor
    endpoint = replay.host(Gateway, bind, ...)          # the gateway in the replay's process
    replay.guest("publish_weights", params, version)    # ... and a call of one of its methods

``RemoteReplay`` has the same synchronous methods as ``ReplayService`` (sample, stats,
restore_sampled, rebind, pop_warnings, close), so the learner and the gateway take either.

``host`` builds a component in the replay actor's own process with the replay itself as its
first argument (``learner.gateway: replay``): a gateway built there adds the chunks it
receives straight into the ``ReplayService``, so they never pass through Ray's object store
(no serialising in the gateway, no copy out of the store in the replay); only the calls the
learner makes on it (weights every few seconds, pace, reports, stats) travel through Ray.
This module never imports the component's class: the caller hands it over.
"""

from __future__ import annotations

from typing import Any

import ray

from daydream.replay.service import ReplayService


class ReplayHost(ReplayService):
    """The replay actor's class: a ``ReplayService`` that can also own one component running in
    its process (the guest: the gateway of ``learner.gateway: replay``), built on the replay."""

    _guest: Any = None

    def host(self, component: type, *args: Any, **kwargs: Any) -> Any:
        """Build ``component(self, *args, **kwargs)`` here and return what its ``start()`` returns
        (a gateway: the bound endpoint). One guest per replay."""
        if self._guest is not None:
            raise RuntimeError(f"this replay already hosts a {type(self._guest).__name__}")
        guest = component(self, *args, **kwargs)
        started = guest.start()
        self._guest = guest
        return started

    def guest(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of the hosted component and return its answer."""
        if self._guest is None:
            raise RuntimeError("this replay hosts nothing: call host() first")
        return getattr(self._guest, method)(*args, **kwargs)


# A threaded actor: sample() may wait for inserts while add_batch() calls keep being served.
ReplayActor = ray.remote(max_concurrency=8, num_cpus=0)(ReplayHost)


def start_ray(address: str | None = None, num_cpus: int = 2, object_store_mb: int = 256) -> None:
    """Join the Ray cluster at ``address``, or start a local instance of this size."""
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(
            address="local",  # never join a cluster found in RAY_ADDRESS or a stale /tmp/ray file
            num_cpus=num_cpus,
            object_store_memory=object_store_mb << 20,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )


def ray_running() -> bool:
    return ray.is_initialized()


def stop_ray() -> None:
    ray.shutdown()


PLACEMENT_AMOUNT = 0.01  # of a custom resource: a label that places an actor, asking nothing else


def placement(resource: str) -> dict[str, Any]:
    """Ray options that put an actor on a node declaring the custom ``resource`` (deploy/RAY.md);
    '': no request (Ray places it on the caller's node first)."""
    return {"resources": {resource: PLACEMENT_AMOUNT}} if resource else {}


def remote_class(cls: type, **ray_options: Any):
    """``cls`` as a threaded Ray actor class (its methods may run beside a running loop)."""
    return ray.remote(max_concurrency=4, num_cpus=0, **ray_options)(cls)


def call(handle, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """Call ``handle.name(*args)`` on a Ray actor and wait for the answer."""
    return ray.get(getattr(handle, name).remote(*args, **kwargs), timeout=timeout)


def kill(handle) -> None:
    ray.kill(handle)


class ReplayGone(RuntimeError):
    """The replay actor's process is gone: killed, its node lost, or stopped with the learner's
    process group (Ctrl-C in a terminal, systemd's stop)."""


class RemoteReplay:
    """Owns a handle on the replay's Ray actor, with ReplayService's synchronous methods.

    Picklable (it holds only the handle), so it can be passed to another Ray actor.
    """

    def __init__(self, handle) -> None:
        self.handle = handle

    @classmethod
    def start(cls, resource: str = "", **options: Any) -> RemoteReplay:
        """Start the replay actor (it reloads its directory before answering anything), on a
        node declaring the custom ``resource`` when one is named."""
        return cls(ReplayActor.options(**placement(resource)).remote(**options))

    def sample(self, batch_size: int, length: int, timeout: float = 0.0, counted: bool = True):
        return ray.get(
            self.handle.sample.remote(batch_size, length, timeout=timeout, counted=counted)
        )

    def add_batch(self, items: list) -> list:
        return ray.get(self.handle.add_batch.remote(items))

    def stats(self, timeout: float | None = None) -> dict:
        return ray.get(self.handle.stats.remote(), timeout=timeout)

    def keys(self) -> list:
        return ray.get(self.handle.keys.remote())

    def restore_sampled(self, sampled: int) -> None:
        ray.get(self.handle.restore_sampled.remote(sampled))

    def start_ratio(self) -> None:
        ray.get(self.handle.start_ratio.remote())

    def ready(self, length: int) -> bool:
        return ray.get(self.handle.ready.remote(length))

    def rebind(self, stream: str, key: str) -> str | None:
        return ray.get(self.handle.rebind.remote(stream, key))

    def pop_warnings(self) -> list[str]:
        return ray.get(self.handle.pop_warnings.remote())

    # ------------------------------------------------------------ a component in its process
    def host(self, component: type, *args: Any, **kwargs: Any) -> Any:
        """Build ``component(replay, *args, **kwargs)`` in the replay actor's process and start
        it (``ReplayHost.host``); returns what its ``start()`` returned, or raises what they
        raised (a missing key file, a port in use) as it was raised there."""
        try:
            return ray.get(self.handle.host.remote(component, *args, **kwargs))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, Exception):
                raise e.cause from None
            raise

    def guest(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method(*args)`` of the hosted component and wait up to ``timeout`` s; raises
        :class:`ReplayGone` when the replay actor's process is gone."""
        try:
            return ray.get(self.handle.guest.remote(method, *args), timeout=timeout)
        except ray.exceptions.RayActorError as e:
            raise ReplayGone(f"the replay actor is gone ({type(e).__name__})") from e

    # ------------------------------------------------------------ pipelined adds (gateway)
    def submit(self, items: list):
        """Start storing a batch; returns a ticket for :meth:`done`."""
        return self.handle.add_batch.remote(items)

    def done(
        self, tickets: list, block: bool = False, timeout: float | None = None
    ) -> list[tuple[Any, Any]]:
        """The tickets that have finished (with ``block``: wait up to ``timeout`` s for one),
        each with its results or the exception the call raised."""
        if not tickets:
            return []
        if block:
            ready, _ = ray.wait(tickets, num_returns=1, timeout=timeout)
        else:
            ready, _ = ray.wait(tickets, num_returns=len(tickets), timeout=0)
        out = []
        for ticket in ready:
            try:
                out.append((ticket, ray.get(ticket)))
            except Exception as e:  # noqa: BLE001 - the caller decides (no acks: robots resend)
                out.append((ticket, e))
        return out

    def close(self) -> None:
        ray.kill(self.handle)
