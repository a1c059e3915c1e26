import math

import pytest
import torch

from worldsim.diffusion.edm import (
    CONTEXT_SIGMA,
    Denoiser,
    DiffusionConfig,
    add_noise,
    edm_loss,
    frame_sigmas,
    get_scalings,
)
from worldsim.diffusion.sampling import (
    SAMPLERS,
    get_sampler,
    num_evaluations,
    sample_euler,
    sample_heun,
)
from worldsim.diffusion.schedules import karras_sigmas, sample_training_sigmas


def test_scalings_match_edm_table_1():
    sigma = torch.tensor([0.01, 0.5, 1.0, 7.0])
    sd = 0.5
    s = get_scalings(sigma, sd)
    torch.testing.assert_close(s.c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(s.c_out, sigma * sd / torch.sqrt(sigma**2 + sd**2))
    torch.testing.assert_close(s.c_in, 1 / torch.sqrt(sigma**2 + sd**2))
    torch.testing.assert_close(s.c_noise, torch.log(sigma) / 4)
    # The network input has unit variance for data of std sd (EDM's derivation of c_in).
    torch.testing.assert_close(s.c_in**2 * (sd**2 + sigma**2), torch.ones(4))
    # Low noise passes the input through, high noise leaves the output to the network.
    assert s.c_skip[0] > 0.99 and s.c_skip[-1] < 0.01


def test_edm_loss_is_weighted_denoising_error():
    """||F - target||^2 equals lambda(sigma) ||D - y||^2 with lambda = 1 / c_out^2 (Eq. 8)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, 4, generator=g)
    sigma = torch.rand(2, 3, generator=g) * 5 + 0.01
    noise = torch.randn(x0.shape, generator=g)
    net_out = torch.randn(x0.shape, generator=g)
    s = get_scalings(sigma, 1.0)
    x = add_noise(x0, sigma, noise)
    loss = edm_loss(net_out, x0, x, s)
    assert loss.shape == (2, 3)
    c = lambda t: t[..., None, None, None]  # noqa: E731
    D = c(s.c_skip) * x + c(s.c_out) * net_out
    expected = ((D - x0) ** 2).flatten(2).mean(-1) / s.c_out**2
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_edm_loss_position_weight_keeps_the_scale_and_moves_the_emphasis():
    g = torch.Generator().manual_seed(1)
    x0, net_out = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    sigma = torch.rand(2, 3, generator=g) + 0.1
    s = get_scalings(sigma, 1.0)
    x = add_noise(x0, sigma, torch.randn(x0.shape, generator=g))
    plain = edm_loss(net_out, x0, x, s)
    # a uniform weight of any size is no weight (normalised to mean 1)
    torch.testing.assert_close(edm_loss(net_out, x0, x, s, torch.full((4, 4), 7.0)), plain)
    # all the weight on the bottom row: only errors there count
    bottom = torch.zeros(4, 4)
    bottom[-1] = 1.0
    wrong_top = net_out.clone()
    wrong_top[..., :3, :] += 10.0
    torch.testing.assert_close(edm_loss(wrong_top, x0, x, s, bottom),
                               edm_loss(net_out, x0, x, s, bottom))
    assert (edm_loss(wrong_top, x0, x, s) > plain).all()


def test_denoiser_loss_and_call_share_the_scalings():
    """The loss is zero exactly when D(x) reproduces the clean input."""
    x0 = torch.randn(2, 3, 4, 4, 4)
    noise = torch.randn_like(x0)
    sigma = torch.tensor([[0.1, 1.0, 5.0], [0.3, 0.3, 0.3]])

    def perfect_net(x_in, c_noise, cond):
        # Invert D = c_skip x + c_out F for D = x0, given the network input x_in = c_in x.
        sig = (4 * c_noise).exp()[..., None, None, None]
        s = get_scalings(sig, 1.0)
        x = x_in / s.c_in
        return (x0 - s.c_skip * x) / s.c_out

    den = Denoiser(perfect_net, 1.0)
    torch.testing.assert_close(den(add_noise(x0, sigma, noise), sigma, None), x0,
                               rtol=1e-4, atol=1e-4)
    assert den.loss(x0, sigma, None, noise).max() < 1e-6


def test_frame_sigmas_broadcast():
    x = torch.zeros(3, 5, 1, 2, 2)
    assert frame_sigmas(torch.tensor([1.0, 2.0, 3.0]), x).shape == (3, 5)
    assert frame_sigmas(torch.ones(3, 5), x).shape == (3, 5)
    assert frame_sigmas(torch.tensor(2.0), x).shape == (3, 5)


def test_karras_schedule():
    s = karras_sigmas(4, 0.004, 10.0, 7.0)
    assert s.shape == (5,) and s[-1] == 0
    torch.testing.assert_close(s[0], torch.tensor(10.0))
    assert bool((s[1:] < s[:-1]).all())
    # Evenly spaced in sigma^(1/rho) (Eq. 5), on a ramp whose next level would be sigma_min:
    # the sampler never spends an evaluation at sigma_min itself.
    r = torch.cat([s[:-1].double(), torch.tensor([0.004], dtype=torch.float64)]) ** (1 / 7)
    torch.testing.assert_close(r.diff(), r.diff()[:1].expand(4), rtol=1e-4, atol=1e-6)
    assert karras_sigmas(1, 0.004, 10.0).tolist() == [10.0, 0.0]
    for n in (2, 3, 8):  # the last step always starts above sigma_min
        assert karras_sigmas(n, 0.004, 10.0)[-2] > 0.004
    with pytest.raises(ValueError, match="at least one step"):
        karras_sigmas(0, 0.004, 10.0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(3, 1.0, 0.5)


def test_training_sigmas_lognormal_and_reproducible():
    cfg = DiffusionConfig()
    kwargs = dict(p_mean=cfg.train_p_mean, p_std=cfg.train_p_std,
                  sigma_min=cfg.train_sigma_min, sigma_max=cfg.train_sigma_max)
    a = sample_training_sigmas((200, 50), generator=torch.Generator().manual_seed(1), **kwargs)
    b = sample_training_sigmas((200, 50), generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b) and a.shape == (200, 50)
    assert a.min() >= cfg.train_sigma_min and a.max() <= cfg.train_sigma_max
    log = a.log()
    assert abs(log.median().item() - cfg.train_p_mean) < 0.05
    assert abs(log.std().item() - cfg.train_p_std) < 0.05
    # Per-frame independence (Diffusion Forcing): frames of one window differ.
    assert (a[:, 1:] != a[:, :1]).float().mean() > 0.99


class CountingGaussianDenoiser:
    """The exact denoiser of 1-D Gaussian data N(mu, s^2): D(x) = mu + s^2 (x - mu) / (s^2 + sigma^2)."""

    def __init__(self, mu: float, s: float):
        self.mu, self.s, self.calls = mu, s, 0

    def __call__(self, x, sigma, cond):
        assert sigma.shape == (x.shape[0],) and bool((sigma > 0).all())
        self.calls += 1
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s**2 * (x - self.mu) / (self.s**2 + sig**2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_recover_gaussian_data(name):
    """With the exact denoiser, the ODE maps the noised data distribution at sigma_max,
    N(mu, s^2 + sigma_max^2), onto the data; enough steps get its mean and spread right."""
    g = torch.Generator().manual_seed(0)
    mu, s = 0.7, 0.5
    sigmas = karras_sigmas(200, 0.002, 20.0, 7.0)
    x = mu + torch.randn(20000, 1, generator=g) * math.sqrt(s**2 + sigmas[0].item() ** 2)
    out = get_sampler(name)(CountingGaussianDenoiser(mu, s), x, sigmas, None)
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() - s) < 0.02


def test_heun_is_more_accurate_than_euler():
    """The analytic ODE solution scales the noise by sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2)."""
    mu, s = 0.0, 0.5
    sigmas = karras_sigmas(20, 0.002, 10.0, 7.0)
    x = torch.linspace(-3, 3, 7)[:, None] * sigmas[0]
    exact = x * s / math.sqrt(s**2 + sigmas[0].item() ** 2)
    err_euler = (sample_euler(CountingGaussianDenoiser(mu, s), x, sigmas, None) - exact).abs().max()
    err_heun = (sample_heun(CountingGaussianDenoiser(mu, s), x, sigmas, None) - exact).abs().max()
    assert err_heun < err_euler


@pytest.mark.parametrize("name,steps", [("euler", 1), ("euler", 4), ("heun", 1), ("heun", 3)])
def test_network_evaluations(name, steps):
    den = CountingGaussianDenoiser(0.0, 1.0)
    get_sampler(name)(den, torch.randn(2, 3), karras_sigmas(steps, 0.01, 5.0), None)
    assert den.calls == num_evaluations(name, steps)
    assert num_evaluations("euler", DiffusionConfig().num_steps) <= 4


def test_samplers_are_deterministic_and_pass_cond():
    seen = []

    def den(x, sigma, cond):
        seen.append(cond)
        return x * 0.5

    x = torch.randn(3, 2, 2)
    sigmas = karras_sigmas(3, 0.01, 5.0)
    a = sample_heun(den, x, sigmas, "COND")
    b = sample_heun(den, x, sigmas, "COND")
    assert torch.equal(a, b) and set(seen) == {"COND"}
    steps = []
    sample_euler(den, x, sigmas, None, callback=lambda i, x, d: steps.append(i))
    assert steps == [0, 1, 2]


def test_point_mass_data_is_reached_exactly():
    """If the denoiser always returns the data point, the last step lands on it."""
    target = torch.full((2, 3), 1.5)
    for name in SAMPLERS:
        out = get_sampler(name)(lambda x, s, c: target, torch.randn(2, 3) * 10,
                                karras_sigmas(4, 0.01, 10.0), None)
        torch.testing.assert_close(out, target)


def test_unknown_sampler_and_context_sigma():
    with pytest.raises(ValueError, match="euler"):
        get_sampler("ddim")
    assert 0 < CONTEXT_SIGMA < DiffusionConfig().sample_sigma_max
    assert DiffusionConfig().context_sigma == CONTEXT_SIGMA
