"""The filter on a Dask cluster survives a worker killed mid-shard: the shard is retried, not lost or doubled."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtp_kedro.vtp.curation.executors import restored_environ
from vtp_kedro.vtp.curation.filters import FilterRules, filter_shards
from vtp_kedro.vtp.data.shards import write_shard

pytestmark = pytest.mark.slow

SHARDS, PER_SHARD = 24, 30


def _input(folder: Path) -> str:
    rng = np.random.default_rng(0)
    for shard in range(SHARDS):
        samples = []
        for i in range(PER_SHARD):
            coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((384, 384), Image.BICUBIC)  # big enough to take a while
            buffer = __import__("io").BytesIO()
            image.save(buffer, "JPEG", quality=90)
            samples.append({"__key__": f"s{shard}_{i}", "jpg": buffer.getvalue(), "txt": b"a red circle on grey"})
        samples.append(dict(samples[0], __key__=f"s{shard}_dup"))  # an exact duplicate in every shard
        write_shard(folder / f"{shard:05d}.tar", samples)
    return str(folder)


def _digests(folder: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))]


def test_a_worker_killed_mid_shard_changes_nothing(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    urls = _input(tmp_path / "in")
    rules = FilterRules(near_dup_hamming=4)
    expected = filter_shards(urls, tmp_path / "pool", rules, samples_per_shard=50, num_workers=2)
    work = tmp_path / "work"
    work.mkdir()
    killed: dict[str, int] = {}
    with restored_environ():  # the cluster's nannies set OMP_NUM_THREADS=1 for later tests' trainings
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:

            def kill_a_busy_worker() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not killed:
                    records = list(work.glob("*/records/*.npz"))
                    busy = [address for address, tasks in client.processing().items() if tasks]
                    if records and busy:  # pass 1 has started and a worker holds a shard task
                        pids = client.run(os.getpid)
                        os.kill(pids[busy[0]], signal.SIGKILL)
                        killed["after_shards"] = len(records)
                        return
                    time.sleep(0.02)

            killer = threading.Thread(target=kill_a_busy_worker)
            killer.start()
            report = filter_shards(urls, tmp_path / "dask", rules, samples_per_shard=50, num_workers=2,
                                   executor="dask", scheduler_address=cluster.scheduler_address, work_dir=work)
            killer.join()
    assert killed and killed["after_shards"] < SHARDS  # it died during pass 1
    assert report.to_dict() == expected.to_dict()
    assert report.total == SHARDS * (PER_SHARD + 1) and report.dropped["exact_duplicate"] == SHARDS
    assert _digests(tmp_path / "dask") == _digests(tmp_path / "pool")
