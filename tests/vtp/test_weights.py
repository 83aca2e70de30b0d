"""The offline weights resolver: search order and the error a missing file gives."""

from __future__ import annotations

import pytest

from vtp_kedro.vtp.core.weights import KNOWN_WEIGHTS, WeightsNotFoundError, hub_checkpoint_dir, resolve_weights

VGG = "vgg16-397923af.pth"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_finds_file_in_hub_checkpoints(torch_home):
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / VGG).write_bytes(b"x")
    assert hub_checkpoint_dir() == checkpoints
    assert resolve_weights(VGG) == checkpoints / VGG


def test_weights_dir_is_searched_first(torch_home, tmp_path):
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / VGG).write_bytes(b"hub")
    configured = tmp_path / "weights"
    configured.mkdir()
    (configured / VGG).write_bytes(b"configured")
    assert resolve_weights(VGG, str(configured)) == configured / VGG


def test_missing_file_error_names_file_folders_and_url(torch_home, tmp_path):
    configured = tmp_path / "weights"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(VGG, str(configured))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert VGG in message
    assert str(configured) in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "folder does not exist" in message
    assert KNOWN_WEIGHTS[VGG].url in message
    assert "LPIPS" in message


def test_unknown_file_uses_given_url_or_says_none_is_known(torch_home):
    with pytest.raises(WeightsNotFoundError, match="https://example.org/inception.pth"):
        resolve_weights("inception.pth", url="https://example.org/inception.pth")
    with pytest.raises(WeightsNotFoundError, match="No download address is known"):
        resolve_weights("inception.pth")


def test_rejects_paths_as_filenames(torch_home):
    with pytest.raises(ValueError, match="bare file name"):
        resolve_weights("sub/vgg16-397923af.pth")
