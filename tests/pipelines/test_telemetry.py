"""The project opts out of Kedro telemetry itself, so `kedro ...` run outside the Makefile sends nothing."""

from __future__ import annotations

import subprocess

import yaml

from tests.pipelines.conftest import REPO


def test_the_project_root_holds_a_telemetry_file_with_consent_false() -> None:
    telemetry = REPO / ".telemetry"
    assert telemetry.is_file()
    assert yaml.safe_load(telemetry.read_text()) == {"consent": False}
    ignored = subprocess.run(["git", "check-ignore", "-q", str(telemetry)], cwd=REPO)
    assert ignored.returncode == 1, ".telemetry is git-ignored: a fresh clone would not have the opt-out"


def test_kedro_telemetry_reads_the_file_as_no_consent(monkeypatch) -> None:
    from kedro_telemetry.plugin import _check_for_telemetry_consent

    for name in ("DO_NOT_TRACK", "KEDRO_DISABLE_TELEMETRY", "GITHUB_REPOSITORY_OWNER"):
        monkeypatch.delenv(name, raising=False)
    assert _check_for_telemetry_consent(REPO) is False
