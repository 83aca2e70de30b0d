"""The generic trainer on a toy regression task: budgets, logging, non-finite steps, accumulation, resume.

``TOY`` is also the stage the launcher tests (test_train_launcher.py, test_train_runs.py) run: a
run config names it ``"toy"`` and lists this module under ``imports``, which registers it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.engine.trainer import (
    BudgetConfig,
    MlflowMetricLogger,
    Trainer,
    TrainerConfig,
    TrainTask,
    batch_size,
    total_steps_for,
)
from vtp_kedro.vtp.stages import Stage
from vtp_kedro.vtp.stages.registry import register_stage

FEATURES, HIDDEN = 6, 16


class ToyData:
    """A fixed random regression set, reshuffled each epoch; each rank takes its slice of the global batch."""

    def __init__(self, rows: int = 64, global_batch: int = 8, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ValueError(f"global_batch {global_batch} does not split over {world} ranks")
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(rows, FEATURES, generator=generator)
        true_w = torch.randn(FEATURES, 1, generator=generator)
        self.y = self.x @ true_w + 0.1 * torch.randn(rows, 1, generator=generator)
        self.global_batch, self.local_batch = global_batch, global_batch // world
        self.per_epoch = rows // global_batch
        self.seed, self.rank, self.index = seed, rank, 0

    def __iter__(self):
        epoch = self.index // self.per_epoch
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + 1 + epoch))
        while self.index // self.per_epoch == epoch:  # one epoch, then the trainer calls iter() again
            start = (self.index % self.per_epoch) * self.global_batch + self.rank * self.local_batch
            rows = order[start:start + self.local_batch]
            self.index += 1
            yield {"x": self.x[rows], "y": self.y[rows]}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = state["index"]


class ToyTask(TrainTask):
    """A small MLP regressor with dropout, an EMA copy and a generator of its own, so that a
    resume must restore global RNG, task state and data position to be exact."""

    def __init__(self, dropout: float = 0.1, jitter: float = 0.01, nan_steps: tuple[int, ...] = (),
                 crash_at_step: int | None = None, sleep_s: float = 0.0) -> None:
        self.model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.LayerNorm(HIDDEN), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(HIDDEN, 1))
        self.ema = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.noise = torch.Generator().manual_seed(7)
        self.jitter, self.nan_steps, self.crash_at_step, self.sleep_s = jitter, set(nan_steps), crash_at_step, sleep_s
        self.ema_updates = 0

    def training_step(self, batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if step == self.crash_at_step:
            raise KeyboardInterrupt(f"simulated interruption at step {step}")
        time.sleep(self.sleep_s)
        mse = F.mse_loss(self.model(batch["x"]), batch["y"])
        draw = torch.rand((), generator=self.noise)
        loss = mse * (1 + self.jitter * draw)
        if step in self.nan_steps:
            loss = loss * float("nan")
        return loss, {"mse": mse.detach(), "draw": draw}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        for name, p in self.model.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP shards are DTensors
            self.ema[name].lerp_(full.detach().cpu(), 0.1)
        self.ema_updates += 1

    def flops_per_step(self, batch: dict[str, Tensor]) -> float:
        return 3 * 2 * batch["x"].shape[0] * (FEATURES * HIDDEN + HIDDEN)  # backward = 2x forward

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"ema.{name}": t for name, t in self.ema.items()}, "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.ema = {name.removeprefix("ema."): t.clone() for name, t in state.items() if name.startswith("ema.")}
        self.noise.set_state(state["noise"])


class ToyTaskConfig(Config):
    """ToyTask's and ToyData's keyword arguments."""

    rows: int = 64
    global_batch: int = 8
    seed: int = 0
    dropout: float = 0.1
    jitter: float = 0.01
    nan_steps: tuple[int, ...] = ()
    crash_at_step: int | None = None
    sleep_s: float = 0.0


def make_toy(config: ToyTaskConfig) -> tuple[ToyTask, ToyData]:
    data = ToyData(config.rows, config.global_batch, config.seed, rank=rank(), world=world_size())
    return ToyTask(config.dropout, config.jitter, config.nan_steps, config.crash_at_step, config.sleep_s), data


TOY = register_stage(Stage("toy", ToyTaskConfig, make_toy))


def trainer_config(**overrides: Any) -> TrainerConfig:
    values = {"budget": {"unit": "steps", "value": 6}, "optimizer": {"lr": 0.05, "warmup_steps": 1},
              "log_every": 1, "checkpoint_every": 2, "device": "cpu"}
    values.update(overrides)
    return TrainerConfig.model_validate(values)


def fit(tmp_path: Path, config: TrainerConfig, task_options: dict | None = None,
        metrics: list | None = None) -> Trainer:
    torch.manual_seed(config.seed)  # as the entry point does before building the model
    task, data = make_toy(ToyTaskConfig(**(task_options or {})))
    trainer = Trainer(config, task, data, tmp_path,
                      log_metrics=None if metrics is None else lambda m, s: metrics.append((s, m)))
    trainer.fit()
    return trainer


def weights(trainer: Trainer) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in trainer.task.model.state_dict().items()}


def assert_bit_identical(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- budgets --------------------------------------------------------------------------------
def test_total_steps_for_each_unit():
    assert total_steps_for(BudgetConfig(unit="steps", value=12), 64, None) == 12
    assert total_steps_for(BudgetConfig(unit="samples", value=100), 8, None) == 13  # spends the whole budget
    assert total_steps_for(BudgetConfig(unit="flops", value=1e9), 8, 1e8) == 10
    # 3 * 0.1 / 0.1 rounds to 3.0000000000000004, whose ceiling would buy a fourth step
    assert total_steps_for(BudgetConfig(unit="flops", value=3 * 0.1), 8, 0.1) == 3
    assert total_steps_for(BudgetConfig(unit="flops", value=3 * 0.1 + 1e-12), 8, 0.1) == 4
    with pytest.raises(ValueError, match="flops_per_step"):
        total_steps_for(BudgetConfig(unit="flops", value=1e9), 8, None)
    with pytest.raises(pydantic.ValidationError, match="whole number"):
        BudgetConfig(unit="steps", value=2.5)
    with pytest.raises(pydantic.ValidationError, match="value"):
        BudgetConfig(unit="samples", value=0)


@pytest.mark.parametrize(("budget", "accumulation", "steps"), [
    ({"unit": "steps", "value": 5}, 1, 5),
    ({"unit": "samples", "value": 60}, 1, 8),     # 8 samples per step: ceil(60 / 8)
    ({"unit": "samples", "value": 60}, 2, 4),     # 16 samples per step
    ({"unit": "flops", "value": 5.5 * 3 * 2 * 8 * (FEATURES * HIDDEN + HIDDEN)}, 1, 6),
])
def test_budget_gives_the_number_of_steps(tmp_path, budget, accumulation, steps):
    trainer = fit(tmp_path, trainer_config(budget=budget, accumulation_steps=accumulation, checkpoint_every=100))
    assert trainer.step == trainer.total_steps == steps
    assert trainer.samples == steps * 8 * accumulation
    assert trainer.flops == pytest.approx(steps * accumulation * 3 * 2 * 8 * (FEATURES * HIDDEN + HIDDEN))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [ckpt.checkpoint_name(steps)]


STEP_FLOPS = ToyTask().flops_per_step({"x": torch.zeros(8, FEATURES)})  # a whole number: sums are exact


@pytest.mark.parametrize("steps_worth", [0.4, 1.0, 2.5, 3.0, 3.001, 4.999])
def test_a_flops_budget_stops_at_the_first_step_that_spends_it(tmp_path, steps_worth):
    """A scaling point spends at least its FLOPs and less than one step more: B <= F < B + F_step."""
    budget = steps_worth * STEP_FLOPS
    trainer = fit(tmp_path, trainer_config(budget={"unit": "flops", "value": budget}, checkpoint_every=100,
                                           optimizer={"lr": 0.05, "warmup_steps": 0}))
    assert trainer.step == math.ceil(steps_worth)
    assert budget <= trainer.flops < budget + STEP_FLOPS


class TenthOfAFlopToy(ToyTask):
    def flops_per_step(self, batch: dict[str, Tensor]) -> float:
        return 0.1  # no binary fraction: quotients and sums of it round


@pytest.mark.parametrize("steps", [1, 3, 6, 12])  # k * 0.1 / 0.1 rounds above k for 3, 6 and 12
def test_a_budget_of_whole_steps_buys_no_extra_step_when_their_flops_round(tmp_path, steps):
    config = trainer_config(budget={"unit": "flops", "value": steps * 0.1}, checkpoint_every=100,
                            optimizer={"lr": 0.05, "warmup_steps": 0})
    torch.manual_seed(config.seed)
    trainer = Trainer(config, TenthOfAFlopToy(), ToyData(), tmp_path)
    trainer.fit()
    assert trainer.step == steps
    # the budget, to rounding: the trainer adds 0.1 per step, the budget is the product steps * 0.1
    assert trainer.flops == pytest.approx(steps * 0.1, rel=1e-12)


def test_warmup_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"warmup_steps \(6\) must be below the total steps \(6\)"):
        fit(tmp_path, trainer_config(optimizer={"warmup_steps": 6}))


# --- logging --------------------------------------------------------------------------------
def test_logs_every_term_and_the_loss_falls(tmp_path):
    metrics: list = []
    trainer = fit(tmp_path, trainer_config(budget={"unit": "steps", "value": 40}, log_every=10,
                                           checkpoint_every=100), {"dropout": 0.0}, metrics)
    assert [step for step, _ in metrics] == [10, 20, 30, 40]
    first, last = metrics[0][1], metrics[-1][1]
    assert {"loss", "mse", "draw", "lr", "grad_norm", "samples_per_s", "samples", "flops", "flop_per_s",
            "nonfinite_steps"} <= first.keys()
    assert last["loss"] < 0.5 * first["loss"]
    assert last["samples"] == 40 * 8 and last["nonfinite_steps"] == 0
    assert last["flops"] == pytest.approx(trainer.flops)
    assert last["lr"] == pytest.approx(trainer.config.optimizer.min_lr)  # the cosine's end value
    assert all(m["grad_norm"] > 0 and m["samples_per_s"] > 0 for _, m in metrics)
    assert read_metrics_log(tmp_path) == [{"step": step, **m} for step, m in metrics]


def test_task_evaluations_run_in_eval_mode_and_are_logged_with_their_step(tmp_path):
    class Evaluated(ToyTask):
        calls: list = []

        def evaluate(self, step):
            Evaluated.calls.append((step, self.model.training, torch.is_grad_enabled()))
            return {"probe/top1": step / 100}

    metrics: list = []
    task, data = Evaluated(), ToyData()
    config = trainer_config(budget={"unit": "steps", "value": 10}, log_every=2, evaluate_every=4)
    Trainer(config, task, data, tmp_path, log_metrics=lambda m, s: metrics.append((s, m))).fit()
    assert Evaluated.calls == [(4, False, False), (8, False, False), (10, False, False)]  # and at the end
    assert task.model.training  # back to training after each evaluation
    logged = {step: m.get("probe/top1") for step, m in metrics}
    assert logged == {2: None, 4: 0.04, 6: None, 8: 0.08, 10: 0.1}
    assert [r.get("probe/top1") for r in read_metrics_log(tmp_path)] == list(logged.values())
    with pytest.raises(ValueError, match="multiple of log_every"):
        trainer_config(log_every=2, evaluate_every=3)


def test_weight_decay_follows_its_cosine_on_decayed_groups_only(tmp_path):
    seen: list = []

    class Watching(ToyTask):
        def training_step(self, batch, step):
            seen.append(sorted(g["weight_decay"] for g in self.trainer.optimizers["main"].param_groups))
            return super().training_step(batch, step)

    task, data = Watching(), ToyData()
    config = trainer_config(optimizer={"lr": 0.05, "warmup_steps": 1, "weight_decay": 0.04, "weight_decay_end": 0.4},
                            budget={"unit": "steps", "value": 5})
    trainer = Trainer(config, task, data, tmp_path)
    task.trainer = trainer
    trainer.fit()
    groups = trainer.optimizers["main"].param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, pytest.approx(0.4)]  # the last step uses the end value
    assert [wd for _, wd in seen] == pytest.approx([0.04, 0.04 + 0.36 * 0.1464466, 0.22, 0.04 + 0.36 * 0.8535534, 0.4],
                                                       rel=1e-5)


def test_counter_terms_are_logged_as_running_totals_and_survive_a_resume(tmp_path):
    class Counting(ToyTask):
        counters = ("samples_half",)

        def training_step(self, batch, step):
            loss, terms = super().training_step(batch, step)
            return loss, {**terms, "samples_half": torch.tensor(len(batch["x"]) / 2)}

    metrics: list = []
    config = trainer_config(budget={"unit": "steps", "value": 6}, log_every=2, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, Counting(crash_at_step=4), ToyData(), tmp_path,
                log_metrics=lambda m, s: metrics.append((s, m))).fit()
    Trainer(config, Counting(), ToyData(), tmp_path, log_metrics=lambda m, s: metrics.append((s, m))).fit()
    assert [(step, m["samples_half"]) for step, m in metrics] == [(2, 8.0), (4, 16.0), (6, 24.0)]


def read_metrics_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_task_terms_must_not_shadow_trainer_metrics(tmp_path):
    class Clashing(ToyTask):
        def training_step(self, batch, step):
            loss, terms = super().training_step(batch, step)
            return loss, {**terms, "grad_norm": loss.detach()}

    task, data = Clashing(), ToyData()
    with pytest.raises(ValueError, match=r"\['grad_norm'\] clash"):
        Trainer(trainer_config(), task, data, tmp_path).fit()


def test_mlflow_logger_writes_to_an_existing_run(tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("trainer-test", artifact_location=str(tmp_path / "art")))
    logger = MlflowMetricLogger(run.info.run_id, uri, prefix="train/")
    logger({"loss": 1.5, "lr": 1e-4}, 10)
    logger({"loss": 0.5, "lr": 2e-4}, 20)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(10, 1.5), (20, 0.5)]
    assert client.get_run(run.info.run_id).data.metrics["train/lr"] == 2e-4
    with pytest.raises(MlflowException, match="no-such-run"):
        MlflowMetricLogger("no-such-run", uri)


# --- non-finite steps -----------------------------------------------------------------------
def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    metrics: list = []
    trainer = fit(tmp_path, trainer_config(checkpoint_every=1, keep_last=10), {"nan_steps": [2]}, metrics)
    before, after = (ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.checkpoint_name(s)) for s in (2, 3))
    assert_bit_identical(before["model"], after["model"])  # step 2 changed nothing
    assert_bit_identical(before["task_state"] | {"noise": after["task_state"]["noise"]}, after["task_state"])
    assert after["trainer_state"]["nonfinite_total"] == 1
    assert math.isnan(metrics[2][1]["loss"]) and metrics[2][1]["nonfinite_steps"] == 1
    assert trainer.task.ema_updates == 5 and trainer.nonfinite_total == 1 and trainer.nonfinite_consecutive == 0
    final = ckpt.load_checkpoint(trainer.last_checkpoint)["model"]
    assert not torch.equal(final["0.weight"], after["model"]["0.weight"])  # training went on


def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    config = trainer_config(max_consecutive_nonfinite=2, checkpoint_every=2)
    with pytest.raises(RuntimeError, match=r"step 3: .*2 in a row, 2 in total.*max_consecutive_nonfinite=2.*"
                                           r"step_00000002"):
        fit(tmp_path, config, {"nan_steps": [2, 3, 4, 5]})
    kept = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step_00000002"]
    state = ckpt.load_checkpoint(kept[0])
    assert state["trainer_state"]["nonfinite_total"] == 0
    assert all(torch.isfinite(t).all() for t in state["model"].values())


# --- accumulation ---------------------------------------------------------------------------
def test_accumulation_matches_one_large_batch(tmp_path):
    exact = {"dropout": 0.0, "jitter": 0.0}
    large = fit(tmp_path / "large", trainer_config(checkpoint_every=100), {**exact, "global_batch": 8})
    accumulated = fit(tmp_path / "acc", trainer_config(accumulation_steps=2, checkpoint_every=100),
                      {**exact, "global_batch": 4})
    assert accumulated.samples == large.samples == 6 * 8
    for name, value in weights(large).items():
        torch.testing.assert_close(weights(accumulated)[name], value, rtol=1e-5, atol=1e-6)


# --- resume ---------------------------------------------------------------------------------
def test_interrupted_run_resumes_bit_identically(tmp_path):
    # 64 rows / 8 = 8 batches per epoch: 10 steps cross an epoch boundary after the resume point.
    config = trainer_config(budget={"unit": "steps", "value": 10}, checkpoint_every=4, keep_last=5)
    reference = fit(tmp_path / "reference", config)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "resumed", config, {"crash_at_step": 6})
    assert ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_00000004"
    resumed = fit(tmp_path / "resumed", config)
    assert resumed.resumed_from.name == "step_00000004"
    assert_bit_identical(weights(reference), weights(resumed))
    assert_bit_identical(reference.task.state_dict(), resumed.task.state_dict())
    final_reference = ckpt.load_checkpoint(reference.last_checkpoint)
    final_resumed = ckpt.load_checkpoint(resumed.last_checkpoint)
    assert_bit_identical(final_reference["optimizer"]["main"]["state"]["model.0.weight"],
                         final_resumed["optimizer"]["main"]["state"]["model.0.weight"])
    assert final_reference["trainer_state"] == final_resumed["trainer_state"]
    # The steps logged after the last checkpoint by the interrupted run are not duplicated.
    timing = {"samples_per_s", "flop_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_metrics_log(tmp_path / "resumed")] == \
        [{k: v for k, v in r.items() if k not in timing} for r in read_metrics_log(tmp_path / "reference")]


def test_resume_settings(tmp_path):
    config = trainer_config()
    first = fit(tmp_path / "run", config)
    with pytest.raises(FileExistsError, match="resume is 'never'"):
        fit(tmp_path / "run", trainer_config(resume="never"))
    again = fit(tmp_path / "run", config)  # already finished: nothing to do
    assert again.resumed_from == first.last_checkpoint == again.last_checkpoint
    assert_bit_identical(weights(first), weights(again))
    # An explicit checkpoint from another run's folder: continue there with a longer budget.
    longer = fit(tmp_path / "other", trainer_config(resume=str(tmp_path / "run" / "checkpoints" / "step_00000004"),
                                                    budget={"unit": "steps", "value": 8}))
    assert longer.resumed_from.name == "step_00000004" and longer.step == 8
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        fit(tmp_path / "bad", trainer_config(resume=str(tmp_path)))


# --- the protocol ---------------------------------------------------------------------------
def test_task_and_data_are_checked(tmp_path):
    with pytest.raises(TypeError, match="must not be an nn.Module"):
        Trainer(trainer_config(), nn.Linear(2, 2), ToyData(), tmp_path)
    with pytest.raises(TypeError, match="needs __iter__, state_dict and load_state_dict"):
        Trainer(trainer_config(), ToyTask(), [1, 2, 3], tmp_path)
    with pytest.raises(NotImplementedError, match="ToyTask does not support activation checkpointing"):
        fit(tmp_path, trainer_config(activation_checkpointing=True))
    with pytest.raises(pydantic.ValidationError, match="checkpoint_every"):
        trainer_config(checkpoint_every=0)


def test_batch_size_of_nested_batches():
    assert batch_size({"meta": ["a"], "x": {"images": torch.zeros(5, 3)}}) == 5
    assert batch_size((torch.zeros(4), torch.zeros(4))) == 4
    with pytest.raises(ValueError, match="holds no tensor"):
        batch_size({"caption": ["a", "b"]})


def test_result_file(tmp_path):
    from vtp_kedro.vtp.launch.launcher import write_result

    trainer = fit(tmp_path, trainer_config())
    result = json.loads(write_result(tmp_path, trainer.summary()).read_text())
    assert result["checkpoint"] == str(tmp_path / "checkpoints" / "step_00000006")
    assert result["step"] == 6 and result["resumed_from"] is None and result["world_size"] == 1


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(tmp_path, monkeypatch, caplog):
    import io
    import logging
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="vtp_kedro"):
        fit(tmp_path / "tty", trainer_config())
    assert "6/6" in terminal.getvalue() and "loss=" in terminal.getvalue()
    assert not any("| loss" in r.message for r in caplog.records)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vtp_kedro"):
        fit(tmp_path / "plain", trainer_config())
    lines = [r.getMessage() for r in caplog.records if "| loss" in r.getMessage()]
    assert len(lines) == 6 and lines[-1].startswith("step 6/6 | loss ") and "samples/s | eta" in lines[-1]


@pytest.mark.parametrize(("precision", "dtype"), [("auto", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_setting_controls_autocast(tmp_path, precision, dtype):
    class Recording(ToyTask):
        dtypes: list = []

        def training_step(self, batch, step):
            self.dtypes.append(self.model[0](batch["x"]).dtype)
            return super().training_step(batch, step)

    task = Recording(dropout=0.0)
    trainer = Trainer(trainer_config(precision=precision), task, ToyData(), tmp_path)
    trainer.fit()
    assert set(task.dtypes) == {dtype}  # "auto" is fp32 on CPU (bf16 autocast is for CUDA)
    assert all(p.dtype == torch.float32 for p in task.model.parameters())  # master weights stay fp32
