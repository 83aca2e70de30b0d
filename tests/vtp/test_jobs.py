"""Jobs through the launcher: latent extraction and DiT sampling, in-process and on 2 gloo ranks.

The folder's classes are foreign (apple, violin, zebra): they must reach the latents' records,
the samples' file names and ``sampling.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.vtp.conftest import CLASSES
from vtp_kedro.vtp.core.progress import Progress
from vtp_kedro.vtp.core.tensors import save_tensors
from vtp_kedro.vtp.data.latents import LatentDataConfig, LatentExtractionConfig, load_latent_stats
from vtp_kedro.vtp.inference import Tokenizer, save_tokenizer
from vtp_kedro.vtp.launch import extract_latents as extraction
from vtp_kedro.vtp.launch import sample_dit as sampling
from vtp_kedro.vtp.launch.launcher import LauncherConfig, launch_job
from vtp_kedro.vtp.models.dit import DiTConfig
from vtp_kedro.vtp.sampling import SampleSetConfig, initial_noise
from vtp_kedro.vtp.stages.dit import DiTTrainingConfig, FlowDiT

REPO = Path(__file__).resolve().parents[2]
TWO_RANKS = LauncherConfig(kind="torchrun", nproc_per_node=2)


@pytest.fixture
def child_env(monkeypatch):
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tokenizer_folder(tokenizer: Tokenizer, tmp_path_factory) -> Path:
    return save_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", tokenizer.net.state_dict(), tokenizer.config, 32)


def extract(tokenizer_folder: Path, image_root: Path, output: Path, launcher: LauncherConfig) -> dict:
    job = extraction.ExtractionJobConfig(
        tokenizer=str(tokenizer_folder), image_root=str(image_root), output=str(output), device="cpu",
        extraction=LatentExtractionConfig(image_size=32, batch_size=4, shard_size=4, num_workers=0, stats_samples=10))
    job_dir = output.parent / f"{output.name}.job"
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text(job.model_dump_json())
    return launch_job(job_dir / "job.json", job_dir, launcher, extraction.JOB)


@pytest.fixture(scope="module")
def latents(tokenizer_folder: Path, image_root: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("latents") / "latents"
    summary = extract(tokenizer_folder, image_root, output, LauncherConfig())
    assert summary["splits"]["train"] == {**summary["splits"]["train"], "images": 15, "shards": 4, "written": 4}
    return output


def test_extraction_job_records_the_folder_s_classes(latents: Path) -> None:
    record = json.loads((latents / "classes.json").read_text())
    assert record["classes"] == sorted(CLASSES) and record["images"] == {"train": 15, "val": 6}
    assert load_latent_stats(latents)["mean"].shape == (1, 4, 1, 1)


@pytest.mark.slow
def test_extraction_on_two_ranks_equals_one(tokenizer_folder, image_root, latents, tmp_path, child_env) -> None:
    summary = extract(tokenizer_folder, image_root, tmp_path / "latents", TWO_RANKS)
    assert summary["world_size"] == 2 and summary["splits"]["train"]["written"] == 4  # 2 shards per rank
    assert summary["splits"]["train"]["encoded"] == 15
    assert digests(tmp_path / "latents") == digests(latents)


def dit_job(latents: Path, tokenizer_folder: Path, output: Path, **samples) -> Path:
    """A sampling job on a DiT whose adaLN modulation is perturbed off zero (a fresh one outputs exactly 0)."""
    task = DiTTrainingConfig(model=DiTConfig(in_channels=4, input_size=4, num_classes=3, width=32, depth=1, heads=1),
                             data=LatentDataConfig(latents=str(latents), batch_size=4))
    torch.manual_seed(0)
    stats = load_latent_stats(latents)
    model = FlowDiT(task, stats["mean"], stats["std"])
    with torch.no_grad():
        for parameter in model.ema.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    job_dir = output.parent / f"{output.name}.job"
    job_dir.mkdir(parents=True)
    save_tensors(model.state_dict(), job_dir / "dit.safetensors")
    job = sampling.SamplingJobConfig(
        task=task, weights=str(job_dir / "dit.safetensors"), tokenizer=str(tokenizer_folder),
        classes=json.loads((latents / "classes.json").read_text())["classes"], output=str(output), device="cpu",
        samples=SampleSetConfig(**{"num_samples": 7, "batch_size": 3, "num_steps": 3, "cfg_scale": 2.0, **samples}),
        record={"dit_step": 0})
    (job_dir / "job.json").write_text(job.model_dump_json())
    return job_dir / "job.json"


def test_sampling_job_writes_adm_npz_pngs_and_foreign_class_names(latents, tokenizer_folder, tmp_path) -> None:
    launch_job(dit_job(latents, tokenizer_folder, tmp_path / "a"), tmp_path / "a.job", LauncherConfig(), sampling.JOB)
    pixels, labels, record = sampling.read_samples(tmp_path / "a")
    assert pixels.shape == (7, 32, 32, 3) and pixels.dtype == np.uint8 and labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert record["classes"] == sorted(CLASSES) and record["sampler"]["cfg_scale"] == 2.0 and record["dit_step"] == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png"))[:3] == ["000000_apple.png", "000001_violin.png",
                                                                          "000002_zebra.png"]
    assert len(np.unique(pixels.reshape(7, -1), axis=0)) == 7
    # The set does not depend on how it is batched: sample i has the noise of index i.
    launch_job(dit_job(latents, tokenizer_folder, tmp_path / "b", batch_size=5), tmp_path / "b.job",
               LauncherConfig(), sampling.JOB)
    np.testing.assert_array_equal(sampling.read_samples(tmp_path / "b")[0], pixels)


def test_noise_of_any_slice_equals_the_same_rows_of_the_whole() -> None:
    whole = initial_noise(9, (2, 3), seed=4)
    torch.testing.assert_close(initial_noise(4, (2, 3), seed=4, start=3), whole[3:7], rtol=0, atol=0)


@pytest.mark.slow
def test_sampling_on_two_ranks_equals_one(latents, tokenizer_folder, tmp_path, child_env) -> None:
    launch_job(dit_job(latents, tokenizer_folder, tmp_path / "one"), tmp_path / "one.job", LauncherConfig(),
               sampling.JOB)
    launch_job(dit_job(latents, tokenizer_folder, tmp_path / "two"), tmp_path / "two.job", TWO_RANKS, sampling.JOB)
    assert digests(tmp_path / "two") == digests(tmp_path / "one")
    assert not list((tmp_path / "two.job").glob("samples_rank*.npz"))  # the parts are merged and removed


@pytest.mark.slow
def test_the_training_command_template_runs_every_job(tokenizer_folder, image_root, tmp_path, child_env) -> None:
    launcher = LauncherConfig(kind="command", command="{python} -m vtp_kedro.vtp.launch --config {config}")
    extract(tokenizer_folder, image_root, tmp_path / "by_command", launcher)
    extract(tokenizer_folder, image_root, tmp_path / "inprocess", LauncherConfig())
    assert digests(tmp_path / "by_command") == digests(tmp_path / "inprocess")


def test_progress_logs_plain_lines_off_a_terminal(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="vtp_kedro.vtp.core.progress"):
        with Progress(10, "encoding train", log_every_s=0.0) as progress:
            progress.update(5)
            progress.update(5)
    assert progress.bar is None  # pytest's stderr is not a terminal
    first, last = [r.getMessage() for r in caplog.records]  # the end is logged once
    assert first.startswith("encoding train: 5/10 img (50%) |") and "img/s | ETA" in first
    assert last.startswith("encoding train: 10/10 img (100%)")
