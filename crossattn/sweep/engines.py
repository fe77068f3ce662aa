"""The engines that turn items into `ItemResult`s: `LocalEngine` (one `Worker` in this process) and
`RayEngine` (an actor pool, with restarts and retries when a worker dies). Each is a context manager with
`check` (refuse bad settings before any item) and `map` (results as they finish); `ENGINES` names them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from ..errors import InputError
from .items import Item, Settings
from .worker import ItemResult, Worker

IN_FLIGHT = 2  # tasks queued per Ray actor: the next item is ready while the driver writes the last
ATTEMPTS = 3  # times an item is tried on Ray when its worker dies under it
STARTUP_TIMEOUT_S = 900


class LocalEngine:
    """One `Worker` in this process."""

    def __init__(self, settings: Settings, workers: int | None = None, address: str | None = None):
        if (workers or 1) != 1 or address:
            raise InputError("--workers and a Ray address need --ray: the local engine runs one pipeline")
        self.settings, self.lost, self.peak_rss_mib = settings, 0, []

    def __enter__(self) -> LocalEngine:
        self.worker = Worker(self.settings)
        return self

    def check(self, seeds: Iterable[int]) -> None:
        self.worker.check(seeds)

    def map(self, items: list[Item]) -> Iterator[ItemResult]:
        return map(self.worker.run, items)

    def __exit__(self, *exc) -> None:
        self.peak_rss_mib = [self.worker.peak_rss_mib()]  # of this whole process


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("the Ray engine needs Ray: pip install 'crossattn[ray]'") from None
    return ray


def _largest_node_cpus(ray) -> float:
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0)


class RayEngine:
    """An actor pool on Ray: a local runtime without `address`, else the cluster at `address` ("auto",
    "host:6379", "ray://host:10001" with ray[client]). A Ray already initialised by the caller is used as is."""

    def __init__(self, settings: Settings, workers: int | None = None, address: str | None = None):
        if workers is not None and workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        self.settings, self.workers, self.address = settings, workers, address
        self.lost, self.peak_rss_mib, self.ray = 0, [], import_ray()

    def __enter__(self) -> RayEngine:
        ray = self.ray
        self.owns = not ray.is_initialized()
        if self.owns:
            where = {"address": self.address} if self.address else {"num_cpus": os.cpu_count(),
                                                                    "include_dashboard": False}
            # Workers' output stays in Ray's logs: their errors come back as exceptions or recorded item errors.
            ray.init(**where, logging_level="ERROR", log_to_driver=False)
        self.actors = []
        try:
            self._start_actors()
        except BaseException:
            self._close()
            raise
        return self

    def _start_actors(self) -> None:
        ray = self.ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = self.workers or max(gpus, 1)
        if gpus and n > gpus:
            raise InputError(f"--workers {n}: the Ray cluster has {gpus} GPUs (one pipeline per GPU)")
        cpus = min(ray.cluster_resources().get("CPU", 1.0) / n, _largest_node_cpus(ray))
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": cpus}
        threads = None if gpus else max(1, int(cpus))
        # A worker process that dies (out of memory, a crash, kill -9) comes back with its pipeline reloaded, and
        # Ray resubmits the items it held once it is back (not to the dead or restarting process), up to
        # ATTEMPTS times each: an item that kills its worker every time is given up on, not retried forever.
        actor = ray.remote(Worker).options(**options, max_restarts=-1, max_task_retries=ATTEMPTS - 1)
        self.actors = [actor.remote(self.settings, threads) for _ in range(n)]
        try:
            ray.get([a.peak_rss_mib.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)  # pipelines loaded
        except ray.exceptions.GetTimeoutError:
            raise InputError(f"Ray could not start {n} workers ({options}) in {STARTUP_TIMEOUT_S} s: "
                             f"the cluster has {ray.cluster_resources()}") from None

    def check(self, seeds: Iterable[int]) -> None:
        try:
            self.ray.get(self.actors[0].check.remote(list(seeds)))
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):  # the worker's refusal as itself: one line, not Ray's traceback
                raise exc.cause from None
            raise

    def map(self, items: list[Item]) -> Iterator[ItemResult]:
        ray, queue, pending = self.ray, iter(items), {}

        def submit(actor) -> None:
            item = next(queue, None)
            if item is not None:
                pending[actor.run.remote(item)] = actor

        for actor in self.actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            submit(pending.pop(ref))
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:  # its worker died under it ATTEMPTS times (or Ray failed): not its fault
                self.lost += 1
                continue
            yield result

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:  # a clean finish: each worker's peak memory, to size the next run
                self.peak_rss_mib = self.ray.get([a.peak_rss_mib.remote() for a in self.actors], timeout=60)
        finally:
            self._close()

    def _close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.owns:
            self.ray.shutdown()


ENGINES = {"local": LocalEngine, "ray": RayEngine}
