"""The cp_measure backend of the feature stage: CellProfiler segments and saves its label images, cp_measure
computes the per-object measurements in-process from those labels (:data:`CP_MEASURE_CATEGORIES`), named like
CellProfiler's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cellresdm import layout
from cellresdm.cppipe import COMPARTMENTS, px
from cellresdm.features.exports import measure_chunk_in_process
from cellresdm.features.settings import FeatureSettings


def _rename_cp_measure(name: str, channel: str | None) -> str:
    """CellProfiler's name of a cp_measure per-object feature (channel appended where CellProfiler does)."""
    if channel is None:  # size and shape: no channel
        return f"AreaShape_{name}"
    if name.startswith("Intensity_") or name.startswith("Location_"):
        return f"{name}_{channel}"
    if name.startswith("Granularity_"):
        return f"{name}_{channel}"
    if name.startswith("RadialDistribution_"):  # RadialDistribution_FracAtD_1of4 -> ..._FracAtD_DNA_1of4
        cat, feat, bins = name.split("_", 2)
        return f"{cat}_{feat}_{channel}_{bins}"
    # texture: AngularSecondMoment_3_00_256 -> Texture_AngularSecondMoment_DNA_3_00_256
    feat, rest = name.split("_", 1)
    return f"Texture_{feat}_{channel}_{rest}"


def measure_objects_cp_measure(
    labels: Mapping[str, np.ndarray], images: np.ndarray, settings: FeatureSettings
) -> dict[str, pd.DataFrame]:
    """Per-object measurements of one image set with cp_measure (``legacy=True`` intensity quantiles).

    Args:
        labels: {compartment: (H, W) int label image} for :data:`COMPARTMENTS` (CellProfiler's labels).
        images: (5, H, W) float in [0, 1], layout.IF_CHANNELS (the values CellProfiler reads: uint16 / 65535).
        settings: feature settings (texture scales, granularity, radial bins, colocalization threshold,
            neighbour distances; pixel sizes scaled like the CellProfiler pipeline).

    Returns:
        {compartment: DataFrame with one row per object (label order 1..N, column ``ObjectNumber``) and
        CellProfiler column names}: AreaShape (with Zernike and Feret), Intensity, Granularity,
        RadialDistribution, Texture, Correlation (Correlation, Manders, RWC, Overlap, K per channel pair)
        and Neighbors (of the three MeasureObjectNeighbors modules). On the same labels these equal
        CellProfiler's to 1e-6 relative (Granularity 5e-5, CellProfiler computes it in float32) except
        Location_MaxIntensity (ties of the maximum), RadialDistribution (cp_measure breaks ties of the
        object centre in C order) and Correlation_RWC (cp_measure's rank weights differ from CellProfiler
        4.2's); Neighbors ignore objects CellProfiler discarded at the border.
    """
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements, get_multimask_measurements
    from cp_measure.core.measurecolocalization import get_correlation_overlap as overlap
    from skimage.segmentation import relabel_sequential

    core = get_core_measurements(legacy=True, sanitize=False)
    corr = get_correlation_measurements(sanitize=False)
    neighbors = get_multimask_measurements()["neighbors"]
    s = settings.segmentation.scale
    imgs = np.asarray(images, dtype=np.float64)
    result: dict[str, pd.DataFrame] = {}
    for obj in COMPARTMENTS:
        # cp_measure wants labels 1..N; ObjectNumber keeps CellProfiler's (an empty cytoplasm leaves a gap)
        lab, _, inverse = relabel_sequential(np.asarray(labels[obj]).astype(np.int32))
        ids = inverse.out_values[inverse.in_values > 0]  # original label of new label 1..N
        cols: dict[str, np.ndarray] = {"ObjectNumber": ids.astype(float)}
        if len(ids) == 0:
            result[obj] = pd.DataFrame(cols)
            continue
        shape = core["sizeshape"](lab, None, calculate_advanced=False, new_features=False)
        if settings.zernike:
            shape |= core["zernike"](lab, None)
        shape |= core["feret"](lab, None)
        cols |= {_rename_cp_measure(k, None): np.asarray(v, float) for k, v in shape.items()}
        for channel, img in zip(layout.IF_CHANNELS, imgs, strict=True):
            feats = dict(core["intensity"](lab, img))
            feats |= core["granularity"](
                lab,
                img,
                subsample_size=settings.granularity_subsample,
                image_sample_size=settings.granularity_background_subsample,
                element_size=px(settings.granularity_radius, s),
                granular_spectrum_length=settings.granularity_range,
            )
            with np.errstate(invalid="ignore", divide="ignore"):  # empty rings give NaN, as in CellProfiler
                feats |= core["radial_distribution"](lab, img, bin_count=settings.radial_bins)
            for scale in (px(v, s) for v in settings.texture_scales):
                texture = core["texture"](lab, img, scale=scale, gray_levels=settings.texture_gray_levels)
                # an object too small for the offset: CellProfiler reports 0, cp_measure NaN
                feats |= {k: np.nan_to_num(np.asarray(v, float), nan=0.0) for k, v in texture.items()}
            cols |= {_rename_cp_measure(k, channel): np.asarray(v, float) for k, v in feats.items()}
        thr = int(settings.colocalization_threshold)
        for a in range(len(layout.IF_CHANNELS)):
            for b in range(a + 1, len(layout.IF_CHANNELS)):
                ca, cb = layout.IF_CHANNELS[a], layout.IF_CHANNELS[b]
                p = corr["pearson"](imgs[a], imgs[b], lab)  # its per-object slope CellProfiler does not report
                cols[f"Correlation_Correlation_{ca}_{cb}"] = np.asarray(p["Correlation_Pearson"], float)
                o = {k: np.asarray(v, float) for k, v in overlap(imgs[a], imgs[b], lab, thr=thr).items()}
                # an object with no pixel above both thresholds: cp_measure gives 0, CellProfiler NaN (0 / 0),
                # unless no object of the image has such pixels (then CellProfiler gives 0 too)
                empty = (o["Correlation_Overlap"] == 0) & (o["Correlation_K_1"] == 0) & (o["Correlation_K_2"] == 0)
                empty &= not empty.all()
                cols[f"Correlation_Overlap_{ca}_{cb}"] = np.where(empty, np.nan, o["Correlation_Overlap"])
                cols[f"Correlation_K_{ca}_{cb}"] = np.where(empty, np.nan, o["Correlation_K_1"])
                cols[f"Correlation_K_{cb}_{ca}"] = np.where(empty, np.nan, o["Correlation_K_2"])
                m = corr["manders_fold"](imgs[a], imgs[b], lab, thr=thr)
                cols[f"Correlation_Manders_{ca}_{cb}"] = np.asarray(m["Correlation_Manders_1"], float)
                cols[f"Correlation_Manders_{cb}_{ca}"] = np.asarray(m["Correlation_Manders_2"], float)
                r = corr["rwc"](imgs[a], imgs[b], lab, thr=thr)
                cols[f"Correlation_RWC_{ca}_{cb}"] = np.asarray(r["Correlation_RWC_1"], float)
                cols[f"Correlation_RWC_{cb}_{ca}"] = np.asarray(r["Correlation_RWC_2"], float)
        # the three MeasureObjectNeighbors modules of the pipeline
        if obj == "Cells":
            dist = px(settings.neighbor_distance_cells, s)
            methods = [("Within a specified distance", dist), ("Adjacent", dist)]
        elif obj == "Nuclei":
            methods = [("Within a specified distance", px(settings.neighbor_distance_nuclei, s))]
        else:
            methods = []
        for method, dist in methods:
            nb = neighbors(lab, lab, distance_method=method, distance=dist)
            cols |= {k: np.asarray(v, float) for k, v in nb.items() if "ObjectNumber" not in k}
        result[obj] = pd.DataFrame(cols)
    return result


def cp_measure_chunk(
    cp_out: Path, pics: Path, ids: list[str], settings: FeatureSettings, seconds: dict[str, float]
) -> pd.DataFrame:
    """Per-image features of a chunk from CellProfiler's labels and cp_measure; adds its time to ``seconds``."""

    def measure(labels: dict[str, np.ndarray], images: np.ndarray, counts: dict[str, float]) -> dict[str, float]:
        row: dict[str, float] = {f"Image_Count_{o}": n for o, n in counts.items()}
        for obj, table in measure_objects_cp_measure(labels, images, settings).items():
            values = table.drop(columns="ObjectNumber").replace([np.inf, -np.inf], np.nan)
            row |= {f"{obj}_{k}": v for k, v in values.agg(settings.aggregate).items()}
        return row

    return measure_chunk_in_process(cp_out, pics, ids, seconds, measure)
