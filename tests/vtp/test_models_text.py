"""Text tower: open_clip TextTransformer from scratch and the bundled BPE tokenizer, offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pydantic
import pytest
import torch

from vtp_kedro.vtp.data.preprocess import tokenize
from vtp_kedro.vtp.models.text import TEXT_PRESETS, TextConfig, TextEncoder, text_config

SOT, EOT = 49406, 49407


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_import_build_and_tokenize_never_touch_the_network():
    # A fresh interpreter whose sockets refuse to connect: importing open_clip, building the BPE
    # tokenizer and the tower and running them must all work.
    script = textwrap.dedent(
        """
        import socket
        def refuse(*a, **k):
            raise RuntimeError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from vtp_kedro.vtp.data.preprocess import tokenize
        from vtp_kedro.vtp.models.text import TextEncoder, text_config
        tokens = tokenize(["a photo of a dog"])
        print(tuple(TextEncoder(text_config("tiny", layers=1), 8)(tokens).shape))
        """
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 8)"


def test_tokenize_layout(no_network):
    tokens = tokenize(["a photo of a cat", ""])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    assert tokens[0, 7:].eq(0).all()
    assert tokens[1, :2].tolist() == [SOT, EOT]
    long = tokenize(["word " * 200])
    assert long[0, 0] == SOT and long[0, -1] == EOT and long[0].ne(0).all()
    assert tokenize(["a cat"], context_length=16).shape == (1, 16)
    with pytest.raises(TypeError, match="list of str"):
        tokenize("a cat")


def test_text_encoder_shapes_and_argmax_pooling(no_network):
    torch.manual_seed(0)
    encoder = TextEncoder(text_config("tiny"), embed_dim=32).eval()
    tokens = tokenize(["a photo of a cat", "a dog on the grass"])
    out = encoder(tokens)
    assert out.shape == (2, 32)

    # Pooled at EOT under a causal mask: tokens after EOT cannot matter, tokens before it do.
    after_eot = tokens.clone()
    after_eot[0, 10:] = 1234
    torch.testing.assert_close(encoder(after_eot)[0], out[0])
    before_eot = tokens.clone()
    before_eot[0, 2] = 1234
    assert not torch.allclose(encoder(before_eot)[0], out[0], atol=1e-4)


def test_text_encoder_rejects_malformed_tokens():
    encoder = TextEncoder(text_config("tiny", layers=1), embed_dim=8)
    with pytest.raises(ValueError, match=r"\(B, 77\)"):
        encoder(torch.zeros(2, 76, dtype=torch.long))
    with pytest.raises(ValueError, match="integer ids"):
        encoder(torch.zeros(2, 77))


def test_text_config_presets_and_validation():
    assert TEXT_PRESETS["paper"] == dict(width=768, heads=12, layers=12)
    assert TextConfig() == text_config("paper")
    assert (TextConfig().context_length, TextConfig().vocab_size) == (77, 49408)
    with pytest.raises(pydantic.ValidationError, match="vocab_size"):
        TextConfig(vocab_size=1000)
    with pytest.raises(ValueError, match="divisible by heads"):
        TextEncoder(text_config("tiny", heads=3), 8)


def test_paper_text_tower_size_on_meta():
    with torch.device("meta"):
        encoder = TextEncoder(text_config("paper"), embed_dim=768)
        out = encoder(torch.zeros(4, 77, dtype=torch.long))
    assert out.shape == (4, 768)
    w, layers, vocab, ctx = 768, 12, 49408, 77
    per_layer = 12 * w * w + 13 * w  # in_proj, out_proj, 4x MLP, two LayerNorms
    expected = vocab * w + ctx * w + layers * per_layer + 2 * w + w * 768
    assert sum(p.numel() for p in encoder.parameters()) == expected  # 123.65M, CLIP ViT-L/14's text tower
