"""Image-generation methods behind one interface (:class:`cellresdm.methods.base.Method`)."""

from __future__ import annotations

import importlib
from typing import Any

from cellresdm.errors import ConfigError
from cellresdm.methods.base import Method

#: Method name -> (module, class). Modules are imported on demand, so a run pays only for the methods it uses.
_REGISTRY: dict[str, tuple[str, str]] = {
    "cellresdm": ("cellresdm.methods.cellresdm_pixel", "CellResDM"),
    "cellresdm_latent": ("cellresdm.methods.cellresdm_latent", "CellResDMLatent"),
    "unet": ("cellresdm.methods.unet_regression", "UNetRegression"),
    "pix2pix": ("cellresdm.methods.pix2pix", "Pix2Pix"),
    "spade": ("cellresdm.methods.spade", "SPADE"),
    "palette": ("cellresdm.methods.palette", "Palette"),
    "spade_diffusion": ("cellresdm.methods.spade_diffusion", "SpadeDiffusion"),
}


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_method(name: str, config: dict[str, Any]) -> Method:
    """Build method ``name`` from the validated pipeline config (its own section and ``train``)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    module, cls = _REGISTRY[name]
    method: type[Method] = getattr(importlib.import_module(module), cls)
    return method.from_config(config)
