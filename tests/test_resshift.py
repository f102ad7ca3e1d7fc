"""ResShift schedule, forward/posterior algebra, losses and sampler (cellresdm.diffusion.resshift)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cellresdm.diffusion import ResShiftDiffusion, ResShiftSchedule

PAPER = {"steps": 15, "kappa": 2.0, "power": 0.3, "min_noise_level": 0.04}
OFFICIAL = {"steps": 4, "kappa": 2.0, "power": 0.3, "min_noise_level": 0.2}
CONFIGS = pytest.mark.parametrize("config", [PAPER, OFFICIAL], ids=["paper_T15", "official_T4"])

# sqrt(eta_t) from the docs/design.md formula, full float64 precision.
GOLDEN_SQRT_ETAS_T15 = [
    0.02, 0.11716508, 0.17630456, 0.23362892, 0.29157413, 0.35100928, 0.41235614, 0.47585773,
    0.54167168, 0.60990993, 0.68065802, 0.75398526, 0.82995066, 0.90860639, 0.99,
]  # fmt: skip
GOLDEN_SQRT_ETAS_T4 = [0.1, 0.52009637, 0.76138199, 0.99]


class Oracle(nn.Module):
    """Ignores its input and returns a stored x0; counts its calls."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.register_buffer("x0", x0.clone())
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 2 * self.x0.shape[1]
        self.calls.append(t.clone())
        return self.x0.to(x.dtype)


def dummy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Deterministic stand-in network that depends on both the scaled x_t and y0 halves of its input."""
    c = x.shape[1] // 2
    return 0.5 * x[:, c:] + 0.3 * x[:, :c]


def _y0(seed: int = 0, shape=(2, 3, 8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


# ---------------------------------------------------------------- schedule


def test_golden_schedule_paper():
    s = ResShiftSchedule(**PAPER)
    np.testing.assert_allclose(s.sqrt_etas, GOLDEN_SQRT_ETAS_T15, atol=5e-9)
    # The rounded values docs/design.md quotes.
    np.testing.assert_allclose(s.sqrt_etas[[0, 1, 2, 13, 14]], [0.02, 0.117, 0.176, 0.909, 0.99], atol=1e-3)
    assert s.sqrt_etas[0] == 0.02 and s.sqrt_etas[-1] == pytest.approx(0.99, abs=1e-15)


def test_golden_schedule_official():
    s = ResShiftSchedule(**OFFICIAL)
    np.testing.assert_allclose(s.sqrt_etas, GOLDEN_SQRT_ETAS_T4, atol=5e-9)
    np.testing.assert_allclose(s.sqrt_etas, [0.1, 0.520, 0.761, 0.99], atol=1e-3)


@CONFIGS
def test_schedule_properties(config):
    s = ResShiftSchedule(**config)
    T = config["steps"]
    for name in ("sqrt_etas", "etas", "alphas", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef_xt", "posterior_mean_coef_x0", "eq11_weights"):  # fmt: skip
        arr = getattr(s, name)
        assert arr.dtype == np.float64 and arr.shape == (T,), name
        assert np.all(np.isfinite(arr)), name
        assert not arr.flags.writeable, name
    assert np.all(np.diff(s.etas) > 0)
    assert np.all(s.alphas > 0)
    assert s.alphas[0] == s.etas[0]
    np.testing.assert_allclose(np.cumsum(s.alphas), s.etas, rtol=0, atol=1e-15)
    assert s.posterior_variance[0] == 0.0
    assert np.all(s.posterior_variance[1:] > 0)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]), rtol=1e-14)
    assert s.posterior_mean_coef_xt[0] == 0.0 and s.posterior_mean_coef_x0[0] == 1.0
    np.testing.assert_allclose(s.posterior_mean_coef_xt + s.posterior_mean_coef_x0, 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 1}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"kappa": 0.0}, "kappa"),
        ({"kappa": -1.0}, "kappa"),
        ({"power": 0.0}, "power"),
        ({"min_noise_level": 0.0}, "min_noise_level"),
        ({"min_noise_level": 3.0}, "min_noise_level"),
        ({"sqrt_eta_T": 1.0}, "sqrt_eta_T"),
    ],
)
def test_schedule_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ResShiftSchedule(**kwargs)


def test_unknown_loss_weighting():
    with pytest.raises(ValueError, match=r"uniform.*eq11"):
        ResShiftDiffusion(ResShiftSchedule(), loss_weighting="snr")


# ---------------------------------------------------------------- forward process and posterior


@CONFIGS
def test_forward_marginal_monte_carlo(config):
    """Eq. 8: x_t ~ N(x0 + eta_t (y0 - x0), kappa^2 eta_t)."""
    d = ResShiftDiffusion(ResShiftSchedule(**config))
    s, n = d.schedule, 200_000
    g = torch.Generator().manual_seed(1234)
    x0, y0 = 0.3, -0.7
    for i in (0, config["steps"] // 2, config["steps"] - 1):
        t = torch.full((n,), i, dtype=torch.long)
        noise = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
        xt = d.q_sample(torch.full_like(noise, x0), torch.full_like(noise, y0), t, noise).flatten()
        assert xt.dtype == torch.float64
        mean, var = x0 + s.etas[i] * (y0 - x0), s.kappa**2 * s.etas[i]
        assert abs(xt.mean().item() - mean) < 5 * np.sqrt(var / n)
        assert abs(xt.var().item() - var) < 5 * var * np.sqrt(2 / n)


@CONFIGS
def test_posterior_composition_analytic(config):
    """Composing q(x_t|x0,y0) with the posterior (Eq. 9-10) gives q(x_{t-1}|x0,y0), exactly."""
    s = ResShiftSchedule(**config)
    x0, y0 = 0.3, -0.7
    for i in range(s.steps):
        eta_prev = s.etas[i - 1] if i > 0 else 0.0
        c_xt, c_x0 = s.posterior_mean_coef_xt[i], s.posterior_mean_coef_x0[i]
        mean = c_xt * (x0 + s.etas[i] * (y0 - x0)) + c_x0 * x0
        var = c_xt**2 * s.kappa**2 * s.etas[i] + s.posterior_variance[i]
        assert mean == pytest.approx(x0 + eta_prev * (y0 - x0), abs=1e-12)
        assert var == pytest.approx(s.kappa**2 * eta_prev, abs=1e-12)


@CONFIGS
def test_posterior_composition_monte_carlo(config):
    d = ResShiftDiffusion(ResShiftSchedule(**config))
    s, n = d.schedule, 200_000
    g = torch.Generator().manual_seed(99)
    x0v, y0v = -0.2, 0.9
    for i in (1, config["steps"] - 1):
        t = torch.full((n,), i, dtype=torch.long)
        x0 = torch.full((n, 1, 1, 1), x0v, dtype=torch.float64)
        y0 = torch.full_like(x0, y0v)
        xt = d.q_sample(x0, y0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        mean, variance, log_variance = d.q_posterior_mean_variance(x0, xt, t)
        assert variance.shape == (n, 1, 1, 1) and log_variance.shape == (n, 1, 1, 1)
        torch.testing.assert_close(variance.log(), log_variance)
        x_prev = (mean + variance.sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)).flatten()
        exp_mean, exp_var = x0v + s.etas[i - 1] * (y0v - x0v), s.kappa**2 * s.etas[i - 1]
        assert abs(x_prev.mean().item() - exp_mean) < 5 * np.sqrt(exp_var / n)
        assert abs(x_prev.var().item() - exp_var) < 5 * exp_var * np.sqrt(2 / n)


def test_posterior_matches_formula_and_dtype():
    d = ResShiftDiffusion(ResShiftSchedule(**OFFICIAL))
    s = d.schedule
    g = torch.Generator().manual_seed(3)
    xt, x0 = torch.randn(4, 2, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)
    t = torch.tensor([0, 1, 2, 3])
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, t)
    assert mean.dtype == var.dtype == logvar.dtype == torch.float32
    assert var.shape == (4, 1, 1, 1)
    for b, i in enumerate(t.tolist()):
        eta, eta_prev = s.etas[i], (s.etas[i - 1] if i else 0.0)
        expected = eta_prev / eta * xt[b] + (eta - eta_prev) / eta * x0[b]
        torch.testing.assert_close(mean[b], expected)
        assert var[b].item() == pytest.approx(s.kappa**2 * eta_prev * (eta - eta_prev) / eta, rel=1e-6, abs=0)
    torch.testing.assert_close(mean[0], x0[0])  # t = 1: the posterior is x0 itself


def test_scale_input_prior_and_model_input():
    d = ResShiftDiffusion(ResShiftSchedule(**PAPER))
    s = d.schedule
    xt, y0 = torch.ones(2, 3, 4, 4, dtype=torch.float64), torch.full((2, 3, 4, 4), 2.0, dtype=torch.float64)
    t = torch.tensor([0, 14])
    scaled = d.scale_input(xt, t)
    assert scaled[0, 0, 0, 0].item() == pytest.approx(1 / np.sqrt(4 * 0.02**2 + 1), rel=1e-14)
    assert scaled[1, 0, 0, 0].item() == pytest.approx(1 / np.sqrt(4 * 0.99**2 + 1), rel=1e-14)
    inp = d.model_input(xt, y0, t)
    assert inp.shape == (2, 6, 4, 4)
    torch.testing.assert_close(inp[:, 3:], y0)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(d.prior_sample(y0, noise), y0 + s.kappa * 0.99 * noise)
    # The prior is the forward marginal at the last step with x0 = y0.
    torch.testing.assert_close(d.prior_sample(y0, noise), d.q_sample(xt, y0, torch.tensor([14, 14]), noise)
                               - (1 - s.etas[-1]) * (xt - y0))  # fmt: skip


def test_bad_step_index():
    d = ResShiftDiffusion(ResShiftSchedule(**OFFICIAL))
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        d.q_sample(x, x, torch.tensor([4]), x)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        d.scale_input(x, torch.tensor(0))


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("weighting", ["uniform", "eq11"])
@CONFIGS
def test_training_losses_oracle_zero(config, weighting):
    d = ResShiftDiffusion(ResShiftSchedule(**config), loss_weighting=weighting)
    g = torch.Generator().manual_seed(5)
    T = config["steps"]
    x0, y0 = torch.rand(T, 3, 8, 8, generator=g) * 2 - 1, torch.rand(T, 3, 8, 8, generator=g) * 2 - 1
    t = torch.arange(T)
    out = d.training_losses(Oracle(x0), x0, t, torch.randn(x0.shape, generator=g), y0=y0)
    assert out["loss"].shape == (T,) and out["mse"].shape == (T,)
    assert out["pred_x0"].shape == x0.shape and out["x_t"].shape == x0.shape
    assert torch.all(out["loss"] == 0) and torch.all(out["mse"] == 0)


@CONFIGS
def test_training_losses_weights(config):
    T = config["steps"]
    s = ResShiftSchedule(**config)
    g = torch.Generator().manual_seed(6)
    x0, y0 = torch.rand(T, 2, 4, 4, generator=g, dtype=torch.float64), torch.zeros(T, 2, 4, 4, dtype=torch.float64)
    wrong = Oracle(x0 + 0.1)
    t = torch.arange(T)
    uni = ResShiftDiffusion(s).training_losses(wrong, x0, t, y0=y0)
    torch.testing.assert_close(uni["loss"], uni["mse"])
    torch.testing.assert_close(uni["mse"], torch.full((T,), 0.01, dtype=torch.float64))
    eq11 = ResShiftDiffusion(s, loss_weighting="eq11").training_losses(wrong, x0, t, y0=y0)
    assert torch.all(torch.isfinite(eq11["loss"])) and torch.all(eq11["loss"] > 0)
    torch.testing.assert_close(eq11["loss"], torch.from_numpy(s.eq11_weights.copy()) * 0.01)
    assert s.eq11_weights[0] == s.eq11_weights[1]


@CONFIGS
def test_eq11_weight_is_posterior_kl(config):
    """w_t * sum ||f - x0||^2 equals KL(q(x_{t-1}|x_t,x0) || q(x_{t-1}|x_t,f)) for t >= 2."""
    d = ResShiftDiffusion(ResShiftSchedule(**config), loss_weighting="eq11")
    g = torch.Generator().manual_seed(7)
    T = config["steps"]
    shape = (T - 1, 2, 4, 4)
    x0, f, xt = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.arange(1, T)
    mu_q, var, _ = d.q_posterior_mean_variance(x0, xt, t)
    mu_p, _, _ = d.q_posterior_mean_variance(f, xt, t)
    kl = ((mu_q - mu_p) ** 2 / (2 * var)).flatten(1).sum(1)
    expected = torch.from_numpy(d.loss_weights[1:].copy()) * ((f - x0) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- sampling


@CONFIGS
def test_oracle_sampling_returns_x0(config):
    d = ResShiftDiffusion(ResShiftSchedule(**config))
    T = config["steps"]
    x0 = _y0(seed=11) * 0.9
    oracle = Oracle(x0)
    out = d.p_sample_loop(oracle, _y0(seed=12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x0)
    assert len(oracle.calls) == T
    assert [c.tolist() for c in oracle.calls] == [[i, i] for i in range(T - 1, -1, -1)]


def test_p_sample_single_step():
    d = ResShiftDiffusion(ResShiftSchedule(**OFFICIAL))
    x0, y0 = _y0(seed=1), _y0(seed=2)
    xt = d.q_sample(x0, y0, torch.tensor([2, 2]), _y0(seed=3))
    noise = _y0(seed=4)
    x_prev, pred = d.p_sample(Oracle(x0), xt, y0, 2, noise)
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, torch.tensor([2, 2]))
    torch.testing.assert_close(x_prev, mean + var.sqrt() * noise)
    torch.testing.assert_close(pred, x0)
    last, _ = d.p_sample(Oracle(x0), xt, y0, 0, noise)  # no noise at the last step
    torch.testing.assert_close(last, x0)
    big = Oracle(x0 * 5)
    _, clipped = d.p_sample(big, xt, y0, 1, noise)
    assert clipped.abs().max() <= 1
    _, unclipped = d.p_sample(big, xt, y0, 1, noise, clip_denoised=False)
    torch.testing.assert_close(unclipped, x0 * 5)


# p_sample_loop(dummy_model, _y0(0), generator=manual_seed(1)) in float64: (sum, abs sum, out[0,0,0,:3], out[1,2,7,5])
GOLDEN_DUMMY = {
    "paper_T15": (-2.1699605649501112, 130.26667040862534, [0.7351962807354031, 0.22405793930978923,
                  -0.07528322729697622], -0.16188712237563352),
    "official_T4": (-1.3248282682687034, 129.78091569815132, [0.7486233299526435, 0.03633430260319556,
                    -0.16491233334525818], -0.2538523897322199),
}  # fmt: skip


@pytest.mark.parametrize(("config", "name"), [(PAPER, "paper_T15"), (OFFICIAL, "official_T4")])
def test_dummy_sampling_golden(config, name):
    d = ResShiftDiffusion(ResShiftSchedule(**config))
    y0 = _y0(seed=0)
    out = d.p_sample_loop(dummy_model, y0, generator=torch.Generator().manual_seed(1))
    total, abs_total, row, entry = GOLDEN_DUMMY[name]
    assert out.shape == y0.shape and out.dtype == torch.float64
    assert out.sum().item() == pytest.approx(total, abs=1e-6)
    assert out.abs().sum().item() == pytest.approx(abs_total, abs=1e-6)
    np.testing.assert_allclose(out[0, 0, 0, :3].numpy(), row, atol=1e-6)
    assert out[1, 2, 7, 5].item() == pytest.approx(entry, abs=1e-6)
    # Identical on rerun.
    again = d.p_sample_loop(dummy_model, y0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    # The generator path draws one (T, B, C, H, W) field up front; passing it explicitly gives the same result.
    noise = torch.randn((config["steps"], *y0.shape), generator=torch.Generator().manual_seed(1), dtype=y0.dtype)
    assert torch.equal(d.p_sample_loop(dummy_model, y0, noise=noise), out)
    # Every noise entry matters (noise[0] is used by the step from index 1 to 0), and a different seed differs.
    for i in (0, config["steps"] - 1):
        bumped = noise.clone()
        bumped[i] += 1.0
        assert not torch.equal(d.p_sample_loop(dummy_model, y0, noise=bumped), out)
    other = d.p_sample_loop(dummy_model, y0, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other, out)


def test_sampling_tiles_share_one_noise_field():
    """Cropping one whole-image noise field per tile reproduces the untiled run for a pixelwise model."""
    d = ResShiftDiffusion(ResShiftSchedule(**OFFICIAL))
    y0 = _y0(seed=21, shape=(1, 3, 8, 8))
    noise = torch.randn((4, *y0.shape), generator=torch.Generator().manual_seed(8), dtype=y0.dtype)
    full = d.p_sample_loop(dummy_model, y0, noise=noise)
    left = d.p_sample_loop(dummy_model, y0[..., :4], noise=noise[..., :4])
    right = d.p_sample_loop(dummy_model, y0[..., 4:], noise=noise[..., 4:])
    assert torch.equal(torch.cat([left, right], dim=-1), full)


def test_sampling_noise_shape_checked_and_no_grad():
    d = ResShiftDiffusion(ResShiftSchedule(**OFFICIAL))
    y0 = _y0(seed=0)
    with pytest.raises(ValueError, match=r"\(T, B, C, H, W\)"):
        d.p_sample_loop(dummy_model, y0, noise=torch.zeros(3, *y0.shape, dtype=y0.dtype))
    conv = nn.Conv2d(6, 3, 1).double()
    out = d.p_sample_loop(lambda x, t: conv(x), y0, generator=torch.Generator().manual_seed(0))
    assert not out.requires_grad
