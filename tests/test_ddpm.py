"""Gaussian DDPM: schedule values, forward marginal, posterior identity, respacing, classifier-free guidance."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from cellresdm.diffusion.ddpm import DDPMSchedule, GaussianDiffusion, guided_denoiser, linear_betas, spaced_steps
from cellresdm.diffusion.resshift import ResShiftDiffusion


def full(steps: int = 1000) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(DDPMSchedule(steps))


def dummy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic eps 'network' that depends on x and on the (original) step index."""
    return 0.3 * torch.tanh(x) + 0.01 * torch.sin(t.double() / 37).to(x.dtype)[:, None, None, None]


def test_linear_schedule_golden_values():
    d = full()
    assert d.betas.dtype == np.float64 and d.betas.shape == (1000,)
    assert d.betas[0] == 1e-4 and d.betas[-1] == 0.02
    assert np.all(np.diff(d.alphas_cumprod) < 0) and 0 < d.alphas_cumprod[-1] < d.alphas_cumprod[0] < 1
    # alpha_bar_T of Ho et al.'s schedule: prod(1 - linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(d.alphas_cumprod[-1], 4.0358e-5, rtol=1e-3)
    # other T scale the end points by 1000 / T
    half = linear_betas(500)
    assert half[0] == pytest.approx(2e-4) and half[-1] == pytest.approx(0.04)
    assert d.posterior_variance[0] == 0 and d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1]


def test_q_sample_marginal_by_monte_carlo():
    d = full()
    x0 = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(1, 8, 1, 1)
    n, t = 40000, 300
    noise = torch.randn(n, 8, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = d.q_sample(x0.expand(n, -1, -1, -1), torch.full((n,), t), noise)
    mean, var = d.q_mean_variance(x0, torch.tensor([t]))
    se = float(var.sqrt()) / n**0.5
    torch.testing.assert_close(xt.mean(0, keepdim=True), mean, atol=5 * se, rtol=0)
    torch.testing.assert_close(xt.var(0), var[0].expand(8, 1, 1), atol=0.03 * float(var), rtol=0)
    assert float(mean[0, -1]) == pytest.approx(np.sqrt(d.alphas_cumprod[t]))


def test_posterior_composed_with_forward_gives_the_earlier_marginal():
    d = full()
    ab, ab_prev = d.alphas_cumprod, d.alphas_cumprod_prev
    # exact, every t: E[c1 x0 + c2 x_t] = sqrt(ab_prev) x0 and c2^2 (1 - ab) + var_post = 1 - ab_prev
    np.testing.assert_allclose(d.posterior_mean_coef1 + d.posterior_mean_coef2 * np.sqrt(ab), np.sqrt(ab_prev))
    np.testing.assert_allclose(
        d.posterior_mean_coef2**2 * (1 - ab) + d.posterior_variance, 1 - ab_prev, rtol=1e-10, atol=1e-15
    )
    # and by sampling through the torch functions at one step
    g = torch.Generator().manual_seed(1)
    n, t = 40000, 120
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    tt = torch.full((n,), t)
    xt = d.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, tt)
    x_prev = mean + var.sqrt() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    target_mean, target_var = d.q_mean_variance(x0[:1], torch.tensor([t - 1]))
    assert float(x_prev.mean()) == pytest.approx(float(target_mean), abs=5 * float(target_var.sqrt()) / n**0.5)
    assert float(x_prev.var()) == pytest.approx(float(target_var), rel=0.03)


def test_training_losses_oracle_is_zero_and_matches_the_resshift_signature():
    d = GaussianDiffusion.from_schedule(DDPMSchedule(50))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 7, 49])
    out = d.training_losses(lambda x_t, tt: noise, x0, t, noise)  # the oracle predicts the true eps
    assert set(out) == {"loss", "mse", "pred_eps", "x_t"}
    assert out["loss"].shape == (3,) and torch.equal(out["loss"], torch.zeros(3))
    torch.testing.assert_close(out["x_t"], d.q_sample(x0, t, noise))
    wrong = d.training_losses(lambda x_t, tt: torch.zeros_like(x_t), x0, t, noise)
    torch.testing.assert_close(wrong["loss"], noise.pow(2).flatten(1).mean(1))
    # both diffusions: q_posterior_mean_variance(x_start, x_t, t) and training_losses(model, x_start, t, noise, ...)
    ddpm_args = list(inspect.signature(GaussianDiffusion.training_losses).parameters)
    resshift_args = list(inspect.signature(ResShiftDiffusion.training_losses).parameters)
    assert resshift_args[: len(ddpm_args)] == ddpm_args == ["self", "model", "x_start", "t", "noise"]
    for cls in (GaussianDiffusion, ResShiftDiffusion):
        assert list(inspect.signature(cls.q_posterior_mean_variance).parameters) == ["self", "x_start", "x_t", "t"]


def test_spaced_steps():
    np.testing.assert_array_equal(spaced_steps(1000, 1000), np.arange(1000))
    kept = spaced_steps(1000, 50)
    assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 999 and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(spaced_steps(1000, 1), [999])
    with pytest.raises(ValueError, match="sample_steps"):
        spaced_steps(10, 11)


def test_respacing_with_all_steps_is_the_full_schedule_exactly():
    d = full()
    r = d.respace(1000)
    for name in (
        "betas",
        "alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "timestep_map",
    ):
        np.testing.assert_array_equal(getattr(r, name), getattr(d, name), err_msg=name)
    small_full, small_respaced = full(50), full(50).respace(50)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    a = small_full.p_sample_loop(dummy_model, x_T, torch.Generator().manual_seed(9))
    b = small_respaced.p_sample_loop(dummy_model, x_T, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    d = full()
    r = d.respace(20)
    kept = spaced_steps(1000, 20)
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-12)
    np.testing.assert_array_equal(r.timestep_map, kept)
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    out = r.p_sample_loop(model, torch.randn(1, 2, 4, 4), torch.Generator().manual_seed(0))
    assert seen == kept[::-1].tolist() and torch.isfinite(out).all() and out.abs().max() <= 1


def test_guidance_zero_is_the_conditional_model_and_guided_calls_batch_both_branches():
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return torch.tanh(x + c) * (1 + t.float()[:, None, None, None] / 100)

    x = torch.randn(3, 7, 4, 4)
    t = torch.tensor([5, 5, 5])
    cond, null = torch.randn(3, 7, 4, 4), torch.zeros(3, 7, 4, 4)
    assert torch.equal(guided_denoiser(model, cond, null, 0.0)(x, t), model(x, t, cond))
    calls.clear()
    guided = guided_denoiser(model, cond, null, 1.5)(x, t)
    assert calls == [6]  # one call with cond and uncond batched
    torch.testing.assert_close(guided, 2.5 * model(x, t, cond) - 1.5 * model(x, t, null))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="steps"):
        DDPMSchedule(1)
    with pytest.raises(ValueError, match="beta_end"):
        DDPMSchedule(10, beta_end=0.02)  # 0.02 * 1000 / 10 = 2 is not a probability
    with pytest.raises(ValueError, match=r"\[0, 49\]"):
        full(50).q_sample(torch.zeros(1, 1, 2, 2), torch.tensor([50]), torch.zeros(1, 1, 2, 2))
