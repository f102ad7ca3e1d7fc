"""Image-generation methods behind one interface (:class:`cellresdm.methods.base.Method`)."""

from __future__ import annotations

from typing import Any

from cellresdm.errors import ConfigError
from cellresdm.methods.base import Method


def method_names() -> tuple[str, ...]:
    return ("cellresdm",)


def build_method(name: str, config: dict[str, Any]) -> Method:
    """Build method ``name`` from the validated pipeline config (its own section and ``train``)."""
    if name == "cellresdm":
        from cellresdm.methods.cellresdm_pixel import CellResDM

        return CellResDM.from_config(config)
    raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
