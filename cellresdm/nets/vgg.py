"""VGG16 feature extractor for the perceptual loss of the GAN baselines (written here: no torchvision).

:class:`VGG16Features` has the layer indices and parameter names of torchvision's ``vgg16().features``
(``features.0.weight`` ... ``features.28.bias``), so the ImageNet weights of a torchvision ``vgg16`` state dict
(``vgg16-397923af.pth``; its ``classifier.*`` entries are ignored) load with :func:`load_vgg16`. Nothing is
downloaded: the pipeline reads the file from the path the config names, and with no path the perceptual term is
off (see :func:`resolve_vgg`).

:func:`perceptual_loss` compares the ReLU outputs ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` of prediction and
target with L1, weighted ``1/32, 1/16, 1/8, 1/4, 1`` (the SPADE/pix2pixHD VGG loss), every grey channel on its own:
repeated to three channels and normalised with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellresdm.errors import CellResDMError
from cellresdm.io import load_torch_dict

__all__ = ["LAYER_WEIGHTS", "TAPS", "VGG16Features", "load_vgg16", "perceptual_loss", "resolve_vgg"]

log = logging.getLogger("cellresdm")

# torchvision's VGG16 configuration "D": conv widths, "M" = 2x2 max pooling
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAPS = (3, 8, 15, 22, 29)
#: weight of each tapped layer in :func:`perceptual_loss` (deeper layers count more, as in pix2pixHD)
LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """The convolutional part of VGG16, frozen; :meth:`forward` returns the :data:`TAPS` activations.

    Weights start random: load ImageNet weights with :func:`load_vgg16`.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        # frozen feature extractor: always in eval mode, whatever its container does
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> the 5 tapped ReLU outputs (ImageNet normalisation is applied here)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features[: TAPS[-1] + 1]):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out


def load_vgg16(path: str | os.PathLike) -> VGG16Features:
    """:class:`VGG16Features` with the weights of a torchvision-format VGG16 state dict file (``.pth``).

    Raises:
        CellResDMError: naming ``path`` when the file is missing or unreadable, or when its ``features.*``
            entries are missing, extra or of the wrong shape (e.g. a ``vgg16_bn`` or ``vgg19`` file).
    """
    path = Path(path)
    if not path.is_file():
        raise CellResDMError(
            f"{path}: VGG16 weights file is missing (set the vgg_weights key to null to train without it)"
        )
    state = load_torch_dict(path, "VGG16 state dict")
    model = VGG16Features()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    problems = [f"{k} missing" for k in expected if k not in given]
    problems += [f"{k} unexpected" for k in given if k not in expected]
    problems += [
        f"{k}: shape {tuple(given[k].shape)}, expected {expected[k]}"
        for k in expected
        if k in given and (not isinstance(given[k], Tensor) or tuple(given[k].shape) != expected[k])
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        raise CellResDMError(f"{path}: not a torchvision VGG16 state dict: {shown}")
    model.load_state_dict({k: given[k].float() for k in expected})
    return model


_warned = False


def resolve_vgg(path: str | os.PathLike | None, method: str) -> VGG16Features | None:
    """The VGG16 of the ``<method>.vgg_weights`` key, or ``None`` (perceptual loss off, warned once per process)."""
    global _warned
    if path is None:
        if not _warned:
            log.warning(
                "%s: no VGG16 weights configured (%s.vgg_weights is null): the perceptual loss is off; "
                "give the path of a torchvision vgg16 state dict to turn it on",
                method,
                method,
            )
            _warned = True
        return None
    return load_vgg16(path)


def perceptual_loss(vgg: VGG16Features, pred: Tensor, target: Tensor) -> Tensor:
    """VGG perceptual loss between ``pred`` and ``target`` (B, C, H, W) in [-1, 1], summed over the C channels.

    Each channel is a grey image, repeated to RGB; per tapped layer the mean absolute difference of the
    activations, weighted by :data:`LAYER_WEIGHTS`. The target's activations carry no gradient.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    b, c, h, w = pred.shape

    def rgb(x: Tensor) -> Tensor:
        return ((x.reshape(b * c, 1, h, w) + 1) / 2).expand(-1, 3, -1, -1)

    with torch.no_grad():
        target_feats = vgg(rgb(target))
    total = pred.new_zeros(())
    for weight, f, t in zip(LAYER_WEIGHTS, vgg(rgb(pred)), target_feats, strict=True):
        # mean over batch, channel and position per grey image, then summed over the C channels
        total = total + weight * F.l1_loss(f, t, reduction="none").mean(dim=(1, 2, 3)).view(b, c).sum(1).mean()
    return total
