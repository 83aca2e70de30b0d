"""load_tokenizer: inference folders and training checkpoints, encode/decode on [0, 1] images, errors."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from vtp_kedro.vtp import Tokenizer, load_tokenizer
from vtp_kedro.vtp.data.preprocess import denormalize, normalize
from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.inference import save_tokenizer, tokenizer_state
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig, VisualTokenizer
from vtp_kedro.vtp.models.vit import vit_config

CONFIG = TokenizerConfig(encoder=vit_config("tiny", patch_size=4, image_size=32, depth=1), latent_dim=8,
                         decoder_width=64, decoder_depth=1, decoder_heads=1)


@pytest.fixture(scope="module")
def trained() -> VisualTokenizer:
    torch.manual_seed(0)
    return VisualTokenizer(CONFIG).eval()


def assert_same_tokenizer(loaded: Tokenizer, reference: VisualTokenizer) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_z = reference.encode(normalize(images))
        expected_x = denormalize(reference.decode(expected_z))
    assert torch.equal(loaded.encode(images), expected_z)
    assert torch.equal(loaded.decode(expected_z), expected_x)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_inference_folder_round_trip_is_byte_stable(trained, tmp_path):
    save_tokenizer(tmp_path / "a", trained.state_dict(), CONFIG, 32, {"stage": "test"})
    save_tokenizer(tmp_path / "b", trained.state_dict(), CONFIG, 32, {"stage": "test"})
    digest = [hashlib.sha256((tmp_path / n / "tokenizer.safetensors").read_bytes()).hexdigest() for n in "ab"]
    assert digest[0] == digest[1]
    tok = load_tokenizer(tmp_path / "a")
    assert_same_tokenizer(tok, trained)
    assert tok.latent_shape() == (8, 8, 8) and tok.latent_shape(64) == (8, 16, 16)
    assert tok.config == CONFIG and tok.image_size == 32
    tok.train()
    assert not tok.training  # an inference model stays in eval mode
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        tok.latent_shape(30)
    with pytest.raises(TypeError, match="float in"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_training_checkpoint_folders_load_without_the_rest_of_the_model(trained, tmp_path):
    model_state = {f"tokenizer.{k}": v for k, v in trained.state_dict().items()}
    model_state["text.token_embedding.weight"] = torch.zeros(3, 2)
    run_config = {"trainer": {}, "task": {"model": {"tokenizer": CONFIG.model_dump(mode="json")},
                                          "data": {"image_size": 32}}}
    # The catalog's CheckpointDataset folder: config.json inside.
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    ckpt.save_tensors(model_state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(run_config))
    assert_same_tokenizer(load_tokenizer(folder), trained)
    # A run's own checkpoint folder: the run config two folders up.
    step = tmp_path / "run" / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    ckpt.save_tensors(model_state, step / "model.safetensors")
    (tmp_path / "run" / "config.json").write_text(json.dumps(run_config))
    assert_same_tokenizer(load_tokenizer(step), trained)
    assert tokenizer_state(model_state).keys() == trained.state_dict().keys()


def test_wrong_folders_are_refused_by_name(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a tokenizer: expected an inference folder"):
        load_tokenizer(tmp_path / "empty")
    other = TokenizerConfig(**{**CONFIG.model_dump(), "latent_dim": 4})
    save_tokenizer(tmp_path / "mismatch", trained.state_dict(), other, 32)
    with pytest.raises(ValueError, match=r"mismatch: the weights for its tokenizer config does not fit: "
                                         r"missing \[\], unexpected \[\], shape mismatches \['bottleneck.weight: \(8, 192\)"):
        load_tokenizer(tmp_path / "mismatch")
