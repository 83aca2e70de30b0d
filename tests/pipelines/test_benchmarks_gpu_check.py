"""benchmarks/gpu_check.py --dry-run: the GPU check's logic and output on the CPU, at tiny shapes.

One dry run covers each kind of section once (a tokenizer step, a DiT step, the CUDA checks, latent
extraction and sampling, the chain); the other sections share their code and are left out with
--only, which they must report. A second run with no budget must skip everything, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.conftest import REPO

SCRIPT = REPO / "benchmarks/gpu_check.py"
SECTIONS = ["tokenizer_vtp_L", "dit_XL1", "dit_B1", "checks", "latents_sampling", "tokenizer_ae_L",
            "tokenizer_vtp_B", "chain"]
RUN = ["tokenizer_vtp_L", "dit_B1", "checks", "latents_sampling", "chain"]
CHECKS = ["bf16_losses_finite", "compile_matches_eager", "resume_fp32_exact", "resume_bf16_close",
          "fsdp2_checkpoint_loads_on_cpu"]


def gpu_check(out: Path, *args: str) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    return gpu_check(tmp_path_factory.mktemp("gpu_check"), "--only", *RUN)


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with ``| header |``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_section_reports_a_status_and_the_run_ones_pass(dry_run: tuple[dict, str]) -> None:
    results, _ = dry_run
    assert results["meta"]["dry_run"] is True and results["meta"]["finished"] is True
    assert {"device", "peak_bf16_tflops", "peak_source", "torch", "budget_s", "elapsed_s"} <= results["meta"].keys()
    sections = results["sections"]
    assert list(sections) == SECTIONS
    for name in SECTIONS:
        if name not in RUN:
            assert sections[name] == {"status": "skipped", "reason": "not in --only"}
    for name in ("tokenizer_vtp_L", "dit_B1", "latents_sampling"):
        assert sections[name]["status"] == "ok", sections[name]
        for row in sections[name]["rows"]:
            assert row["status"] == "ok" and row["images_per_s"] > 0 or row["case"] == "bf16 compile", row
    # The chain is minutes long on a CPU: skipped with its reason, conf/gpu validated instead.
    assert sections["chain"]["status"] == "skipped" and "dry run" in sections["chain"]["reason"]


def test_step_measures_search_the_batch_and_time_eager_and_compiled(dry_run: tuple[dict, str]) -> None:
    sections = dry_run[0]["sections"]
    for name in ("tokenizer_vtp_L", "dit_B1"):
        section = sections[name]
        assert section["batch_search"] == {"2": "fits"} and section["flops_per_step"] > 0
        assert [row["case"] for row in section["rows"]] == ["bf16 eager", "bf16 compile"]
        timed = section["rows"] if name == "dit_B1" else section["rows"][:1]
        for row in timed:
            assert row["status"] == "ok" and row["batch"] == 2 and row["losses_finite"] is True
            assert row["s_per_step"] > 0 and row["tflops"] > 0 and row["mfu"] is None  # no peak on a CPU
    # The dry run compiles the tokenizer step once, in the checks, not again in its section.
    compiled = sections["tokenizer_vtp_L"]["rows"][1]
    assert compiled["status"] == "skipped" and "compile_matches_eager" in compiled["note"]
    reference = sections["dit_B1"]["reference"]
    assert reference["images_per_s_per_gpu"] is None and "no B/1" in reference["source"]


def test_the_cuda_checks_hold_on_the_cpu(dry_run: tuple[dict, str]) -> None:
    checks = dry_run[0]["sections"]["checks"]
    assert checks["status"] == "ok" and list(checks["checks"]) == CHECKS
    for name, check in checks["checks"].items():
        assert check["status"] == "ok", (name, check)
    assert checks["checks"]["resume_fp32_exact"]["bit_identical"] is True
    assert checks["checks"]["resume_fp32_exact"]["killed_at_step"] == 4
    assert checks["checks"]["fsdp2_checkpoint_loads_on_cpu"]["parameters_are_dtensors"] is True


def test_markdown_has_a_row_per_measure_and_per_check(dry_run: tuple[dict, str]) -> None:
    results, markdown = dry_run
    rows = table_rows(markdown, "section")
    assert rows[0][0] == "tokenizer_vtp_L" and rows[0][1] == "bf16 eager"
    assert {row[0] for row in rows} == set(SECTIONS)
    for name, section in results["sections"].items():
        ours = [row for row in rows if row[0] == name]
        assert len(ours) == max(1, len(section.get("rows", []))), name
        assert all(row[-1].split(":")[0] in ("ok", "skipped", section["status"]) for row in ours), ours
    checks = table_rows(markdown, "check")
    assert [row[0] for row in checks] == CHECKS and all(row[1] == "ok" for row in checks)


def test_a_spent_budget_skips_every_section_with_its_reason(tmp_path: Path) -> None:
    results, markdown = gpu_check(tmp_path, "--budget-s", "0")
    for name, section in results["sections"].items():
        assert section["status"] == "skipped" and section["reason"].startswith("budget:"), name
    assert all(row[-1] == "skipped" for row in table_rows(markdown, "section"))
