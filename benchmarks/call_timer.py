"""Per-call timing of a module's forward passes, shared by the sampling benchmarks."""

from __future__ import annotations

import time

import torch


class CallTimer:
    """Times every forward call of ``module`` (forward hooks; no change to the model), synchronising CUDA
    around each call when ``device`` is a GPU so the times are the kernels', not the launches'."""

    def __init__(self, module: torch.nn.Module, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.seconds: list[float] = []
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self, module, args):
        self.sync()
        self._t0 = time.perf_counter()

    def _stop(self, module, args, output):
        self.sync()
        self.seconds.append(time.perf_counter() - self._t0)
