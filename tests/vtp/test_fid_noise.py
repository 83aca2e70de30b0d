"""One FID's sampling noise from split halves (metrics.fidelity.fid_split_half_noise), on Gaussian
features whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vtp_kedro.vtp.metrics.fidelity import fid_split_half_noise, fid_statistics, frechet_distance
from vtp_kedro.vtp.metrics.generation import fidelity_metrics

DIM, N = 8, 1000


def _samples(generator: torch.Generator, shift: float) -> torch.Tensor:
    x = torch.randn(N, DIM, generator=generator, dtype=torch.float64)
    x[:, 0] += shift
    return x


def test_the_split_half_estimate_matches_the_known_spread_of_one_fid():
    """Samples of N(shift e_1, I) against the exact reference N(0, I): FID = |mean|^2 + a covariance term,
    whose spread from N samples is 2 shift / sqrt(N) to first order (|mean - shift e_1|^2 is the
    square of a N(0, I/N) shift); 200 independent FIDs agree, and so does the estimate from each set's
    own halves, on average over 30 sets."""
    reference = {"mu": np.zeros(DIM), "sigma": np.eye(DIM)}
    generator = torch.Generator().manual_seed(0)
    shift = 2.0
    known = 2 * shift / np.sqrt(N)
    fids = [frechet_distance(fid_statistics(_samples(generator, shift)), reference) for _ in range(200)]
    assert np.std(fids, ddof=1) == pytest.approx(known, rel=0.15)
    estimates = [fid_split_half_noise(_samples(generator, shift), reference, splits=8, seed=i) for i in range(30)]
    assert np.mean(estimates) == pytest.approx(known, rel=0.2)
    # reproducible with its seed, other splits with another
    x = _samples(generator, shift)
    assert fid_split_half_noise(x, reference, seed=1) == fid_split_half_noise(x, reference, seed=1)
    assert fid_split_half_noise(x, reference, seed=1) != fid_split_half_noise(x, reference, seed=2)


def test_the_estimate_refuses_too_few_samples_and_is_reported_only_when_asked():
    reference = {"mu": np.zeros(DIM), "sigma": np.eye(DIM)}
    with pytest.raises(ValueError, match="N >= 4"):
        fid_split_half_noise(torch.randn(3, DIM), reference)
    with pytest.raises(ValueError, match="splits"):
        fid_split_half_noise(torch.randn(10, DIM), reference, splits=0)

    class Space:  # the three layers of a feature space, all the same features here
        suffix, fid_layer, isc_layer, prc_layer = "_ref", "f", "logits", "f"

    generator = torch.Generator().manual_seed(0)
    generated = {"f": _samples(generator, 1.0).float()[:200], "logits": torch.randn(200, 5, generator=generator)}
    real = {"features": {"f": _samples(generator, 0.0).float()[:300]}}
    assert "gfid_ref_noise" not in fidelity_metrics(generated, real, Space(), "g")
    metrics = fidelity_metrics(generated, real, Space(), "g", noise_splits=3)
    assert 0 < metrics["gfid_ref_noise"] < metrics["gfid_ref"]
