import math

import numpy as np
import pytest
import torch

from worldsim.evaluation.metrics import frame_metrics, mse_to_psnr, psnr, ssim


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Straight-from-the-paper SSIM of one single-channel image with explicit loops over
    window positions (Wang et al. 2004, eq. 13 with a Gaussian-weighted window)."""
    size, sigma = 11, 1.5
    c = np.arange(size) - (size - 1) / 2
    g = np.exp(-c**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (w * a).sum(), (w * b).sum()
            vx, vy = (w * (a - mx) ** 2).sum(), (w * (b - my) ** 2).sum()
            cov = (w * (a - mx) * (b - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2)
                          / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_psnr_matches_its_definition():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[0] += 0.1          # MSE 0.01 -> 20 dB
    y[1, :, :4] += 0.5   # MSE 0.125 -> 9.03 dB
    values = psnr(x, y, data_range=1.0)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(-10 * math.log10(0.125), abs=1e-4)
    assert mse_to_psnr(0.01) == pytest.approx(20.0)
    assert torch.isfinite(psnr(x, x)).all()  # identical images: capped, not inf


def test_ssim_matches_reference_implementation():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (20, 24))
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255)
    expected = _ssim_reference(a, b, 255.0)
    got = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None], data_range=255.0)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_ssim_is_one_for_identical_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    noisy = [x + s * torch.randn(x.shape, generator=g) for s in (0.02, 0.1, 0.3)]
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    scores = [ssim(x, n.clamp(0, 1)).mean().item() for n in noisy]
    assert scores[0] > scores[1] > scores[2]


def test_frame_metrics_on_uint8_frames_with_leading_dims():
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    fake = real.copy()
    fake[0, 0] = 255 - fake[0, 0]
    m = frame_metrics(torch.from_numpy(real), torch.from_numpy(fake))
    assert m["psnr"].shape == (6,) and m["ssim"].shape == (6,)
    assert m["psnr"][0] < 20 and (m["psnr"][1:] > 90).all()
    assert m["ssim"][0] < 0.5 and torch.allclose(m["ssim"][1:], torch.ones(5))


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least that large"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
