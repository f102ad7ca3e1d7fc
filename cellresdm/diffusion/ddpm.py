"""Gaussian DDPM (Ho et al. 2020) in the improved-diffusion style, with respacing and classifier-free guidance.

Used by the Palette and SPADE-Diffusion baselines. Conventions match :mod:`cellresdm.diffusion.resshift`:
schedule arithmetic in float64 numpy; a timestep tensor ``t`` is a LongTensor (B,) of 0-based indices into the
diffusion's own steps; coefficients are gathered in float64, then cast to the data's dtype and device. Both
modules share improved-diffusion's signatures: ``q_posterior_mean_variance(x_start, x_t, t) -> (mean, variance,
log_variance)`` and ``training_losses(model, x_start, t, noise) -> {"loss": (B,), "mse": (B,), ...}``. Equation
numbers refer to Ho et al. (2020).

* Schedule: linear betas from ``beta_start * 1000 / T`` to ``beta_end * 1000 / T`` (1e-4 .. 0.02 at T = 1000),
  ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``.
* Forward (Eq. 4): ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``.
* Posterior ``q(x_{t-1} | x_t, x0)`` (Eq. 6-7): mean ``c1_t x0 + c2_t x_t`` with ``c1_t = beta_t sqrt(alpha_bar_{t-1}) /
  (1 - alpha_bar_t)``, ``c2_t = (1 - alpha_bar_{t-1}) sqrt(1 - beta_t) / (1 - alpha_bar_t)``, variance
  ``beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` (0 at the first step; its log is clipped to the second).
* Training (Eq. 14): the network predicts eps; loss ``mean ||eps_theta(x_t, t) - eps||^2`` with t uniform.
* Sampling: ancestral, with the fixed posterior variance ("fixed small"); the x0 estimate
  ``(x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` (Eq. 15) is clipped to [-1, 1] before the posterior mean.

Respacing (:meth:`GaussianDiffusion.respace`): S evenly spaced steps ``k_0 < ... < k_{S-1} = T-1`` of the
training schedule, with betas recomputed so the kept steps keep their ``alpha_bar``: ``beta'_i = 1 -
alpha_bar_{k_i} / alpha_bar_{k_{i-1}}`` (``alpha_bar_{k_{-1}} = 1``). Where two kept steps are consecutive the
original beta is reused as is, so respacing with all T steps reproduces the full schedule bit for bit. The
network always sees the original step index ``k_i`` (``timestep_map``).

Classifier-free guidance (:func:`guided_denoiser`): ``eps = (1 + w) eps(x, t, c) - w eps(x, t, null)``, the
parametrisation of Ho & Salimans (2021): ``w = 0`` is the conditional model exactly (one network call, no
unconditional branch), ``w > 0`` pushes away from the unconditional prediction. With ``w != 0`` the conditional
and unconditional halves go through the network in one batched call.

Noise: :meth:`GaussianDiffusion.p_sample_loop` starts from an ``x_T`` the caller gives (cropped by the tiled
sampler from one whole-field noise tensor, so overlapping tiles start from the same ``x_T``) and draws the
per-step noise from a ``torch.Generator``. Storing the per-step noise for the whole field (1000 steps x a
1080 px field x 7 channels) is not practical, so overlapping tiles do not share it; the tile blending averages
the differences out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "DDPMSchedule",
    "Denoiser",
    "GaussianDiffusion",
    "guided_denoiser",
    "linear_betas",
    "spaced_steps",
]

#: ``model(x_t (B, C, H, W), t (B,) original step index) -> eps (B, C, H, W)``.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def linear_betas(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """(T,) float64 linear betas; the end points are scaled by ``1000 / T`` (improved-diffusion), so T = 1000
    gives exactly ``beta_start`` .. ``beta_end`` and other T keep the same total noise."""
    scale = 1000.0 / steps
    return np.linspace(scale * beta_start, scale * beta_end, steps, dtype=np.float64)


def spaced_steps(steps: int, sample_steps: int) -> np.ndarray:
    """(S,) int64 sorted indices of ``sample_steps`` evenly spaced steps of ``steps``; always holds ``T-1``
    (sampling must start from pure noise) and, for S >= 2, step 0; S = T gives ``0..T-1``."""
    if not 1 <= sample_steps <= steps:
        raise ValueError(f"sample_steps must be in [1, {steps}], got {sample_steps}")
    # spacing (T-1)/(S-1) >= 1, so the rounded indices are distinct
    return np.sort(np.round(np.linspace(steps - 1, 0, sample_steps)).astype(np.int64))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class DDPMSchedule:
    """Linear beta schedule of T training steps (Ho et al.: T = 1000, betas 1e-4 .. 0.02)."""

    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {self.steps!r}")
        scale = 1000.0 / self.steps
        if not 0 < self.beta_start <= self.beta_end or not scale * self.beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end and beta_end * 1000 / steps < 1, got beta_start="
                f"{self.beta_start!r}, beta_end={self.beta_end!r}, steps={self.steps}"
            )

    def betas(self) -> np.ndarray:
        """(T,) float64."""
        return linear_betas(self.steps, self.beta_start, self.beta_end)


class GaussianDiffusion:
    """Forward process, posterior, eps-prediction loss and ancestral sampler for the betas given.

    Args:
        betas: (S,) float64 in (0, 1).
        timestep_map: (S,) original step index of each step (what the network is given); default ``0..S-1``.
    """

    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a 1-D array of values in (0, 1)")
        n = len(betas)
        self.num_timesteps = n
        self.timestep_map = (
            np.arange(n, dtype=np.int64) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        )
        if self.timestep_map.shape != (n,):
            raise ValueError(f"timestep_map must have shape ({n},), got {self.timestep_map.shape}")
        self.betas = _frozen(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = _frozen(np.cumprod(alphas))
        self.alphas_cumprod_prev = _frozen(np.append(1.0, self.alphas_cumprod[:-1]))
        self.sqrt_alphas_cumprod = _frozen(np.sqrt(self.alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = _frozen(np.sqrt(1.0 - self.alphas_cumprod))
        self.sqrt_recip_alphas_cumprod = _frozen(np.sqrt(1.0 / self.alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = _frozen(np.sqrt(1.0 / self.alphas_cumprod - 1.0))
        self.posterior_variance = _frozen(betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod))
        # the first step's variance is 0: clip its log to the second step's
        self.posterior_log_variance_clipped = _frozen(
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if n > 1
            else np.log(np.maximum(self.posterior_variance, 1e-20))
        )
        self.posterior_mean_coef1 = _frozen(betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod))
        self.posterior_mean_coef2 = _frozen(
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def from_schedule(cls, schedule: DDPMSchedule) -> GaussianDiffusion:
        return cls(schedule.betas())

    def respace(self, sample_steps: int) -> GaussianDiffusion:
        """The diffusion restricted to ``sample_steps`` evenly spaced steps (:func:`spaced_steps`; module doc)."""
        kept = spaced_steps(self.num_timesteps, sample_steps)
        betas = np.empty(len(kept), dtype=np.float64)
        prev = -1
        for i, k in enumerate(kept):
            if k == prev + 1:  # consecutive: the original beta (exact when nothing is skipped)
                betas[i] = self.betas[k]
            else:
                betas[i] = 1.0 - self.alphas_cumprod[k] / (self.alphas_cumprod[prev] if prev >= 0 else 1.0)
            prev = int(k)
        return GaussianDiffusion(betas, self.timestep_map[kept])

    # ------------------------------------------------------------------ helpers
    def _extract(self, arr: np.ndarray, t: Tensor, x: Tensor) -> Tensor:
        """arr[t] gathered in float64, cast to x's dtype/device, shaped (B, 1, ..., 1)."""
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        idx = t.detach().to("cpu", torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_timesteps):
            raise ValueError(f"t must hold step indices in [0, {self.num_timesteps - 1}], got {idx.tolist()}")
        vals = torch.tensor(arr, dtype=torch.float64)[idx].to(device=x.device, dtype=x.dtype)
        return vals.reshape(t.shape[0], *([1] * (x.dim() - 1)))

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Original step indices (B,) the network is given for the steps ``t`` of this diffusion."""
        return torch.tensor(self.timestep_map)[t.detach().to("cpu", torch.long)].to(t.device)

    # ------------------------------------------------------------------ forward process and posterior
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, C, H, W) and variance (B, 1, 1, 1) of q(x_t | x0) (Ho et al. Eq. 4)."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
        return mean, self._extract(1.0 - self.alphas_cumprod, t, x0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x0) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (Ho et al. Eq. 4), (B, C, H, W)."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior q(x_{t-1} | x_t, x0) (Ho et al. Eq. 6-7).

        Args:
            x_start: x0, the clean data (or its estimate), (B, C, H, W).
            x_t: the chain at step index t, (B, C, H, W).
            t: (B,) step indices.

        Returns:
            mean ``c1_t x0 + c2_t x_t`` (B, C, H, W), variance ``beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)``
            and its clipped log (B, 1, 1, 1).
        """
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            self._extract(self.posterior_variance, t, x_t),
            self._extract(self.posterior_log_variance_clipped, t, x_t),
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (Ho et al. Eq. 15), (B, C, H, W)."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    # ------------------------------------------------------------------ training
    def training_losses(
        self, model: Denoiser, x_start: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The simple eps loss (Ho et al. Eq. 14) at one step per sample, on x_t drawn by Eq. 4.

        Args:
            model: ``model(x_t (B, C, H, W), original step indices (B,)) -> eps (B, C, H, W)``.
            x_start: x0, the targets, (B, C, H, W).
            t: (B,) step indices of this diffusion.
            noise: eps of Eq. 4, (B, C, H, W); drawn with ``randn_like`` when None.

        Returns:
            ``loss`` (B,) the per-sample eps MSE averaged over (C, H, W) (unweighted, so equal to ``mse``),
            ``mse`` (B,), ``pred_eps`` and ``x_t`` (B, C, H, W).
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        eps = model(x_t, self.model_timesteps(t))
        if eps.shape != x_start.shape:
            raise ValueError(f"model output has shape {tuple(eps.shape)}, expected {tuple(x_start.shape)}")
        mse = (eps - noise).pow(2).flatten(1).mean(dim=1)
        return {"loss": mse, "mse": mse, "pred_eps": eps, "x_t": x_t}

    # ------------------------------------------------------------------ sampling
    def p_sample(
        self, model: Denoiser, x_t: Tensor, i: int, noise: Tensor | None, clip_denoised: bool = True
    ) -> tuple[Tensor, Tensor]:
        """One reverse step from step ``i`` to ``i - 1``: returns (x_{i-1}, x0 estimate), both (B, C, H, W).
        ``noise`` (B, C, H, W) is required for i > 0 and ignored at i = 0 (the mean is returned)."""
        t = torch.full((x_t.shape[0],), i, dtype=torch.long, device=x_t.device)
        eps = model(x_t, self.model_timesteps(t))
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        if i == 0:
            return mean, x0
        if noise is None:
            raise ValueError("p_sample needs noise for steps > 0")
        return mean + torch.exp(0.5 * log_variance) * noise, x0

    @torch.no_grad()
    def p_sample_loop(
        self,
        model: Denoiser,
        x_T: Tensor,
        generator: torch.Generator,
        clip_denoised: bool = True,
        progress: bool = False,
    ) -> Tensor:
        """Ancestral sampling from ``x_T`` (B, C, H, W) to the x0 estimate; exactly ``num_timesteps`` model calls.

        The noise of the step from i to i - 1 (i = S-1, ..., 1) is drawn, in that order, with
        ``torch.randn(x_T.shape, generator=generator)`` on the generator's device and moved to x_T's; the
        last step adds none. A generator on x_T's device avoids a host-to-device copy per step.
        """
        x = x_T
        steps = tqdm(range(self.num_timesteps - 1, -1, -1), desc="DDPM sampling", disable=not progress, leave=False)
        for i in steps:
            noise = None
            if i > 0:
                noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
                noise = noise.to(x.device)
            x, _ = self.p_sample(model, x, i, noise, clip_denoised=clip_denoised)
        return x


def guided_denoiser(
    model: Callable[[Tensor, Tensor, Tensor], Tensor], cond: Tensor, null_cond: Tensor, guidance_scale: float
) -> Denoiser:
    """Classifier-free guided eps: ``(1 + w) model(x, t, cond) - w model(x, t, null_cond)`` with ``w =
    guidance_scale``. ``w == 0`` calls only ``model(x, t, cond)`` (the conditional model exactly); otherwise the
    conditional and unconditional inputs are batched into one call of 2B items.

    Args:
        model: ``model(x (B, C, H, W), t (B,), cond (B, Cc, H, W)) -> eps (B, C, H, W)``.
        cond, null_cond: (B, Cc, H, W) the condition and its null (dropped) version.
    """
    w = float(guidance_scale)
    if w == 0.0:
        return lambda x, t: model(x, t, cond)
    both = torch.cat([cond, null_cond], dim=0)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        eps_cond, eps_uncond = model(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), both).chunk(2, dim=0)
        return (1.0 + w) * eps_cond - w * eps_uncond

    return denoise
