"""Settings of the feature stage (config section ``features``, segmentation from ``groundtruth``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cellresdm import config
from cellresdm.errors import ConfigError
from cellresdm.groundtruth import GroundTruthSettings


@dataclass(frozen=True)
class FeatureSettings:
    """Settings of the feature stage; sizes are in pixels at 0.598 um/px and scaled like the segmentation.

    Built by :meth:`from_config` from the validated section: the config schema holds every default (in
    parentheses below, the cpg0000 analysis pipeline's values) and every check.

    Attributes:
        segmentation: nuclei/cell segmentation settings (the ground-truth ones, but
            ``discard_border_nuclei=True`` as in the reference analysis pipeline: cut cells bias features).
            Its ``pixel_size_um`` is the pixel size of the measured fields.
        backend: ``"fast"`` (default, :mod:`cellresdm.features.fast`), ``"cellprofiler"`` (the reference) or
            ``"cp_measure"``.
        aggregate: per-image aggregation of per-object values, ``"median"`` or ``"mean"``.
        chunk_size: most image sets per CellProfiler process.
        colocalization_threshold: MeasureColocalization threshold, % of the maximum intensity (15).
        granularity_subsample, granularity_background_subsample: subsampling factors (0.5, 0.5).
        granularity_radius: structuring element radius, px (10, in subsampled pixels).
        granularity_range: length of the granular spectrum (16).
        neighbor_distance_cells, neighbor_distance_nuclei: "Within a specified distance" of the two
            MeasureObjectNeighbors modules, px (5 and 1; a third one measures adjacent cells).
        radial_bins: MeasureObjectIntensityDistribution bins (4, scaled bins).
        radial_max_radius: its maximum radius, px (100; unused with scaled bins).
        zernike: MeasureObjectSizeShape Zernike features (True).
        texture_scales: MeasureTexture scales, px ((3, 5, 10)).
        texture_gray_levels: MeasureTexture gray levels (256).
    """

    segmentation: GroundTruthSettings
    backend: str
    aggregate: str
    chunk_size: int
    colocalization_threshold: float
    granularity_subsample: float
    granularity_background_subsample: float
    granularity_radius: float
    granularity_range: int
    neighbor_distance_cells: float
    neighbor_distance_nuclei: float
    radial_bins: int
    radial_max_radius: float
    zernike: bool
    texture_scales: tuple[float, ...]
    texture_gray_levels: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any], segmentation: Mapping[str, Any] | None = None) -> FeatureSettings:
        """Settings from the validated ``features`` config section (:func:`cellresdm.config.section`).

        ``segmentation`` (the validated ``groundtruth`` section; its schema defaults when None) gives the
        segmentation keys; the section's own ``segmentation`` mapping overrides them. ``discard_border_nuclei``
        is True unless the features section sets it (the ground-truth value is not inherited). The merged keys
        are validated as a ``groundtruth`` section. Keys that are not settings are ignored; lists become tuples.

        Raises:
            ConfigError: an invalid ``features.segmentation`` key, or the section lacks a setting (it was not
                validated against the schema).
        """
        seg = {k: v for k, v in dict(segmentation or {}).items() if k != "discard_border_nuclei"}
        seg = {"discard_border_nuclei": True, **seg, **dict(section.get("segmentation") or {})}
        try:
            seg = config.section("groundtruth", seg)
        except ConfigError as exc:
            raise ConfigError(f"features.segmentation: {exc}") from exc
        kwargs = config.settings_values(cls, section, "features", skip=("segmentation",))
        return cls(segmentation=GroundTruthSettings.from_config(seg), **kwargs)

    def at_pixel_size(self, pixel_size_um: float) -> FeatureSettings:
        """These settings for fields of another pixel size (e.g. a dataset resized from the source)."""
        return dataclasses.replace(
            self, segmentation=dataclasses.replace(self.segmentation, pixel_size_um=float(pixel_size_um))
        )
