"""ResShift residual diffusion as used by CellResDM.

The chain shifts the residual ``e0 = y0 - x0`` between the target ``x0`` (Cell Painting channels) and the
degraded input ``y0`` (brightfield planes repeated to the target's channel count), instead of diffusing to pure
noise. Equation numbers refer to the CellResDM paper (they follow ResShift, Yue et al. 2023):

* Eq. 7   schedule ``sqrt(eta_t)`` and forward transition ``q(x_t | x_{t-1}, y0) = N(x_{t-1} + alpha_t e0,
  kappa^2 alpha_t I)`` with ``alpha_t = eta_t - eta_{t-1}``, ``eta_0 = 0``.
* Eq. 8   marginal ``q(x_t | x0, y0) = N(x0 + eta_t e0, kappa^2 eta_t I)``.
* Eq. 9-10 posterior ``q(x_{t-1} | x_t, x0, y0) = N(eta_{t-1}/eta_t x_t + alpha_t/eta_t x0,
  kappa^2 eta_{t-1} alpha_t / eta_t I)``.
* Eq. 11  training loss ``sum_t w_t ||f(x_t, y0, t) - x0||^2``.

Conventions (as in openai/improved-diffusion): schedule arithmetic is done in float64 numpy; a timestep tensor
``t`` is a LongTensor of shape (B,) of 0-based step indices in ``[0, T-1]``, index ``i`` being step ``t = i + 1``
of the paper; coefficients are gathered in float64 and cast to the data's dtype and device.
The network is called as ``model(x: (B, 2C, H, W), t: LongTensor (B,)) -> (B, C, H, W)`` and predicts x0.
Signatures follow improved-diffusion as :mod:`cellresdm.diffusion.ddpm` does: ``q_posterior_mean_variance(x_start,
x_t, t) -> (mean, variance, log_variance)`` and ``training_losses(model, x_start, t, noise, *, y0) -> {"loss": (B,),
"mse": (B,), ...}``; the condition ``y0`` is the one extra, keyword-only, argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

__all__ = ["LOSS_WEIGHTINGS", "ResShiftDiffusion", "ResShiftSchedule"]

LOSS_WEIGHTINGS = ("uniform", "eq11")

Model = Callable[[Tensor, Tensor], Tensor]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class ResShiftSchedule:
    """The ResShift noise schedule (Eq. 7). All arrays are float64 of shape (T,), index i = step t = i + 1.

    ``sqrt_eta_1 = min(min_noise_level / kappa, min_noise_level)``, ``sqrt_eta_T = sqrt_eta_T``, and in between
    ``sqrt_eta_t = sqrt_eta_1 * b ** (((t - 1) / (T - 1)) ** power * (T - 1))`` with
    ``b = exp(log(sqrt_eta_T / sqrt_eta_1) / (T - 1))``. The paper uses T=15, kappa=2, power=0.3,
    min_noise_level=0.04; the official CellResDM configs use T=4, min_noise_level=0.2.
    """

    steps: int = 15
    kappa: float = 2.0
    power: float = 0.3
    min_noise_level: float = 0.04
    sqrt_eta_T: float = 0.99

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 2:
            raise ValueError(
                f"steps must be an integer >= 2 (the schedule interpolates between sqrt_eta_1 and sqrt_eta_T), "
                f"got {self.steps!r}"
            )
        for name in ("kappa", "power", "min_noise_level", "sqrt_eta_T"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.sqrt_eta_T >= 1:
            raise ValueError(f"sqrt_eta_T must be < 1, got {self.sqrt_eta_T!r}")
        if self.sqrt_eta_1 >= self.sqrt_eta_T:
            raise ValueError(
                f"min_noise_level={self.min_noise_level!r} (kappa={self.kappa!r}) gives sqrt_eta_1="
                f"{self.sqrt_eta_1!r}, which must be < sqrt_eta_T={self.sqrt_eta_T!r}"
            )

    @property
    def sqrt_eta_1(self) -> float:
        return float(min(self.min_noise_level / self.kappa, self.min_noise_level))

    @cached_property
    def sqrt_etas(self) -> np.ndarray:
        """sqrt(eta_t), (T,), increasing from sqrt_eta_1 to sqrt_eta_T (Eq. 7)."""
        T = self.steps
        base = np.exp(np.log(self.sqrt_eta_T / self.sqrt_eta_1) / (T - 1))
        frac = np.arange(T, dtype=np.float64) / (T - 1)  # (t - 1) / (T - 1)
        return _frozen(self.sqrt_eta_1 * base ** (frac**self.power * (T - 1)))

    @cached_property
    def etas(self) -> np.ndarray:
        """eta_t, (T,)."""
        return _frozen(self.sqrt_etas**2)

    @cached_property
    def etas_prev(self) -> np.ndarray:
        """eta_{t-1}, (T,), with eta_0 = 0."""
        return _frozen(np.append(0.0, self.etas[:-1]))

    @cached_property
    def alphas(self) -> np.ndarray:
        """alpha_t = eta_t - eta_{t-1} (alpha_1 = eta_1), (T,): variance increment of Eq. 7 over kappa^2."""
        return _frozen(self.etas - self.etas_prev)

    @cached_property
    def posterior_variance(self) -> np.ndarray:
        """kappa^2 eta_{t-1} alpha_t / eta_t, (T,) (Eq. 10); 0 at t = 1."""
        return _frozen(self.kappa**2 * self.etas_prev * self.alphas / self.etas)

    @cached_property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log posterior variance, (T,), with the t = 1 entry (log 0) replaced by the t = 2 entry."""
        var = self.posterior_variance
        return _frozen(np.log(np.append(var[1], var[1:])))

    @cached_property
    def posterior_mean_coef_xt(self) -> np.ndarray:
        """eta_{t-1} / eta_t, (T,) (Eq. 9)."""
        return _frozen(self.etas_prev / self.etas)

    @cached_property
    def posterior_mean_coef_x0(self) -> np.ndarray:
        """alpha_t / eta_t, (T,) (Eq. 9)."""
        return _frozen(self.alphas / self.etas)

    @cached_property
    def input_scale(self) -> np.ndarray:
        """1 / sqrt(kappa^2 eta_t + 1), (T,): normalises x_t before it enters the network."""
        return _frozen(1.0 / np.sqrt(self.kappa**2 * self.etas + 1.0))

    @cached_property
    def eq11_weights(self) -> np.ndarray:
        """Eq. 11 weight w_t = alpha_t / (2 kappa^2 eta_t eta_{t-1}), (T,); the t = 1 entry repeats t = 2.

        Derivation: the t-th term of the variational bound is KL(q(x_{t-1}|x_t, x0, y0) || p(x_{t-1}|x_t, y0)),
        where p is the posterior of Eq. 9-10 with x0 replaced by the prediction f. Both Gaussians share the
        variance s^2 = kappa^2 eta_{t-1} alpha_t / eta_t, so the KL is ||mu_q - mu_p||^2 / (2 s^2) with
        mu_q - mu_p = (alpha_t / eta_t)(x0 - f), i.e. (alpha_t / eta_t)^2 / (2 s^2) ||x0 - f||^2
        = alpha_t / (2 kappa^2 eta_t eta_{t-1}) ||f - x0||^2. At t = 1 eta_0 = 0 and the weight is infinite
        (that term is a reconstruction term, not a KL); we use the finite t = 2 weight there.
        """
        w = np.empty(self.steps, dtype=np.float64)
        w[1:] = self.alphas[1:] / (2.0 * self.kappa**2 * self.etas[1:] * self.etas_prev[1:])
        w[0] = w[1]
        return _frozen(w)


class ResShiftDiffusion:
    """Forward process, posterior, loss and ancestral sampler of ResShift (Eq. 7-11).

    loss_weighting: "uniform" (weight 1, as ResShift trains) or "eq11" (``ResShiftSchedule.eq11_weights``,
    the KL weight of the variational bound). Losses are per-sample *means* over (C, H, W), so the eq11 loss is
    the KL term divided by C*H*W.
    """

    def __init__(self, schedule: ResShiftSchedule, loss_weighting: str = "uniform"):
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        self.schedule = schedule
        self.loss_weighting = loss_weighting
        self.num_timesteps = schedule.steps
        if loss_weighting == "uniform":
            self.loss_weights = _frozen(np.ones(schedule.steps))
        else:
            self.loss_weights = schedule.eq11_weights

    # ------------------------------------------------------------------ helpers
    def _check_t(self, t: Tensor) -> None:
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t must hold step indices in [0, {self.num_timesteps - 1}], got {t.tolist()}")

    def _extract(self, arr: np.ndarray, t: Tensor, x: Tensor) -> Tensor:
        """arr[t] gathered in float64, cast to x's dtype/device and shaped (B, 1, ..., 1) like x."""
        self._check_t(t)
        vals = torch.tensor(arr, dtype=torch.float64)[t.detach().to("cpu", torch.long)]
        vals = vals.to(device=x.device, dtype=x.dtype)
        return vals.reshape(t.shape[0], *([1] * (x.dim() - 1)))

    def _step_tensor(self, t: int, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, y0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x0, y0) (Eq. 8): x0 + eta_t (y0 - x0) + kappa sqrt(eta_t) noise. All (B, C, H, W)."""
        if noise is None:
            noise = torch.randn_like(x0)
        eta = self._extract(self.schedule.etas, t, x0)
        sqrt_eta = self._extract(self.schedule.sqrt_etas, t, x0)
        return x0 + eta * (y0 - x0) + self.schedule.kappa * sqrt_eta * noise

    def scale_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x_t / sqrt(kappa^2 eta_t + 1), (B, C, H, W): roughly unit variance for the network."""
        return x_t * self._extract(self.schedule.input_scale, t, x_t)

    def model_input(self, x_t: Tensor, y0: Tensor, t: Tensor) -> Tensor:
        """Network input cat([scale_input(x_t, t), y0], dim=1), (B, 2C, H, W)."""
        return torch.cat([self.scale_input(x_t, t), y0], dim=1)

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior q(x_{t-1} | x_t, x0, y0) (Eq. 9-10).

        Args:
            x_start: x0, the clean target (or its prediction), (B, C, H, W).
            x_t: the chain at step index t, (B, C, H, W).
            t: (B,) step indices.

        Returns:
            mean ``eta_{t-1}/eta_t x_t + alpha_t/eta_t x0`` (B, C, H, W), variance ``kappa^2 eta_{t-1} alpha_t /
            eta_t`` and its clipped log (B, 1, 1, 1).
        """
        mean = (
            self._extract(self.schedule.posterior_mean_coef_xt, t, x_t) * x_t
            + self._extract(self.schedule.posterior_mean_coef_x0, t, x_t) * x_start
        )
        variance = self._extract(self.schedule.posterior_variance, t, x_t)
        log_variance = self._extract(self.schedule.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    def prior_sample(self, y0: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_T = y0 + kappa sqrt(eta_T) noise, (B, C, H, W): the start of sampling."""
        if noise is None:
            noise = torch.randn_like(y0)
        return y0 + self.schedule.kappa * float(self.schedule.sqrt_etas[-1]) * noise

    # ------------------------------------------------------------------ training
    def training_losses(
        self, model: Model, x_start: Tensor, t: Tensor, noise: Tensor | None = None, *, y0: Tensor
    ) -> dict[str, Tensor]:
        """The loss of Eq. 11 at one step per sample, on x_t drawn by Eq. 8.

        Args:
            model: ``model(x (B, 2C, H, W), t (B,)) -> x0 prediction (B, C, H, W)``.
            x_start: x0, the targets, (B, C, H, W).
            t: (B,) step indices.
            noise: eps of Eq. 8, (B, C, H, W); drawn with ``randn_like`` when None.
            y0: the conditions, (B, C, H, W) (keyword: the one input DDPM's loss lacks).

        Returns:
            ``loss`` (B,) the weighted per-sample MSE (``loss_weighting``), ``mse`` (B,), ``pred_x0`` and ``x_t``
            (B, C, H, W).
        """
        x_t = self.q_sample(x_start, y0, t, noise)
        pred_x0 = model(self.model_input(x_t, y0, t), t)
        if pred_x0.shape != x_start.shape:
            raise ValueError(f"model output has shape {tuple(pred_x0.shape)}, expected {tuple(x_start.shape)}")
        mse = (pred_x0 - x_start).pow(2).flatten(1).mean(dim=1)
        weight = self._extract(self.loss_weights, t, mse)
        return {"loss": weight * mse, "mse": mse, "pred_x0": pred_x0, "x_t": x_t}

    # ------------------------------------------------------------------ sampling
    def p_sample(
        self,
        model: Model,
        x_t: Tensor,
        y0: Tensor,
        t: int,
        noise: Tensor | None = None,
        clip_denoised: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """One reverse step from step index t (paper step t + 1) to t - 1.

        Returns (x_{t-1}, pred_x0), both (B, C, H, W). Noise (drawn with randn_like if None) is added only when
        t > 0; at t = 0 the posterior variance is 0 and x_{-1} (the paper's x_0) equals pred_x0.
        """
        tt = self._step_tensor(t, x_t)
        pred_x0 = model(self.model_input(x_t, y0, tt), tt)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, log_variance = self.q_posterior_mean_variance(pred_x0, x_t, tt)
        if t == 0:
            return mean, pred_x0
        if noise is None:
            noise = torch.randn_like(x_t)
        return mean + torch.exp(0.5 * log_variance) * noise, pred_x0

    def p_sample_loop(
        self,
        model: Model,
        y0: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
        progress: bool = False,
    ) -> Tensor:
        """Ancestral sampling from x_T to the x0 estimate (B, C, H, W); exactly T model calls, under no_grad.

        noise: optional (T, B, C, H, W). noise[T-1] makes the prior x_T = y0 + kappa sqrt(eta_T) noise[T-1];
        the step from index i to i - 1 (i = T-1, ..., 1) adds noise[i - 1]; the last step (index 0) adds none.
        Every entry is used once, so a tiled sampler can crop one whole-image noise field per tile and get the
        same draws as an untiled run. Without it, the whole (T, B, C, H, W) field is drawn up front from
        ``generator`` (on the generator's device, then moved to y0's), so passing that same tensor as ``noise``
        reproduces the generator path exactly. clip_denoised clamps pred_x0 to [-1, 1] at every step.
        """
        T = self.num_timesteps
        shape = (T, *y0.shape)
        if noise is None:
            gen_device = generator.device if generator is not None else y0.device
            noise = torch.randn(shape, generator=generator, device=gen_device, dtype=y0.dtype).to(y0.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape (T, B, C, H, W) = {shape}, got {tuple(noise.shape)}")
        noise = noise.to(device=y0.device, dtype=y0.dtype)
        steps = range(T - 1, -1, -1)
        if progress:
            try:
                from tqdm.auto import tqdm

                steps = tqdm(steps, desc="ResShift sampling", total=T)
            except ImportError:  # pragma: no cover - tqdm is optional
                pass
        with torch.no_grad():
            x = self.prior_sample(y0, noise[T - 1])
            for i in steps:
                x, _ = self.p_sample(
                    model, x, y0, i, noise=noise[i - 1] if i > 0 else None, clip_denoised=clip_denoised
                )
        return x
