"""Where the filter's tasks run: a local process pool or a Dask cluster, behind one ``map``.

``map(fn, items)`` runs ``fn`` on every item and returns the results in the items' order, so
the filter's output cannot depend on which worker ran what, nor when. Both executors are
context managers that start their workers once for every pass of a run.

- ``ProcessExecutor``: ``num_workers`` spawned processes (the same start method everywhere, and
  safe beside torch's threads); one worker runs the tasks in the calling process.
- ``DaskExecutor``: Dask distributed, on a ``LocalCluster`` of ``num_workers`` single-threaded
  worker processes when ``scheduler_address`` is None, else on the user's cluster (``dask
  scheduler`` / ``dask worker``, dask-jobqueue on SLURM). A task whose worker dies is run again
  elsewhere by the scheduler; every filter task writes its files atomically under names of its
  own, so a rerun task replaces its output and nothing is lost or doubled.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal, Protocol

ExecutorKind = Literal["processes", "dask"]


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


@contextlib.contextmanager
def restored_environ() -> Iterator[None]:
    """Put ``os.environ`` back as it was on exit. A Dask LocalCluster's nannies write their workers'
    settings (OMP_NUM_THREADS=1, ...) into the calling process's environment; left there, every
    later subprocess (a torchrun training) would run on one thread and compute different numbers."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class ProcessExecutor:
    def __init__(self, num_workers: int, initializer: Callable[[], None] | None = None) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.initializer = initializer
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProcessExecutor:
        if self.num_workers > 1:
            self._pool = ProcessPoolExecutor(max_workers=self.num_workers, initializer=self.initializer,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if self._pool is None or len(items) <= 1:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))


class DaskExecutor:
    def __init__(self, num_workers: int, scheduler_address: str | None = None,
                 initializer: Callable[[], None] | None = None) -> None:
        self.num_workers = num_workers
        self.scheduler_address = scheduler_address
        self.initializer = initializer
        self._client: Any = None
        self._cluster: Any = None
        self._environ: contextlib.ExitStack | None = None

    def __enter__(self) -> DaskExecutor:
        from dask.distributed import Client, LocalCluster  # imported only when asked for

        self._environ = contextlib.ExitStack()
        self._environ.enter_context(restored_environ())
        if self.scheduler_address is None:
            # one thread per worker process: the tasks are CPU-bound Python (decode, hash)
            self._cluster = LocalCluster(n_workers=self.num_workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=40)
            self._client = Client(self._cluster)
        else:
            self._client = Client(self.scheduler_address)
        if self.initializer is not None:
            self._client.run(self.initializer)
        return self

    @property
    def client(self) -> Any:
        return self._client

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
        if self._environ is not None:
            self._environ.close()
            self._environ = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if not items:
            return []
        # pure=False: every item is its own task even when two look alike; retries: a task that
        # raises (an I/O hiccup on a remote store) is tried again before the run fails.
        futures = self._client.map(fn, list(items), pure=False, retries=2)
        return self._client.gather(futures)


def make_executor(kind: ExecutorKind, num_workers: int, scheduler_address: str | None = None,
                  initializer: Callable[[], None] | None = None) -> Executor:
    if kind == "processes":
        if scheduler_address is not None:
            raise ValueError("scheduler_address is for executor 'dask'; the process pool runs locally")
        return ProcessExecutor(num_workers, initializer)
    if kind == "dask":
        return DaskExecutor(num_workers, scheduler_address, initializer)
    raise ValueError(f"unknown executor {kind!r}: choose 'processes' or 'dask'")
