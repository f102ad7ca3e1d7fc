"""The self-contained HTML report page: captions, figures embedded as base64 PNG, tables as HTML, the run's
config and the list of missing inputs; it needs no network or other file."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellresdm.metrics import TRIVIAL
from cellresdm.report.figures import REFERENCE_BETTER, REFERENCE_WORSE
from cellresdm.stats import ALPHA

_CAPTIONS: dict[str, str] = {
    "fig4": "Fig. 4. One test field (the one with the median SSIM of the reference method unless chosen): first "
    "row the real images (in-focus BF, the 5 IF channels, the nuclei and cell boundary masks), then each method's "
    "prediction. Every column uses the real image's 0.5-99.5 percentile range, so brightness differences between "
    "methods are visible.",
    "fig5": "Fig. 5. MSE, PSNR and SSIM (0-255 scale) per test image, IF channel and method. Markers above a box: "
    f"paired t-test against the reference over the same test images, p < {ALPHA:g}; '{REFERENCE_BETTER}' the "
    f"reference is better, red '{REFERENCE_WORSE}' the reference is worse. {TRIVIAL} copies the normalised "
    "in-focus BF into every channel: the trivial floor a method must beat.",
    "fig6": "Fig. 6. Segmentation of generated images: F1 and mean true score (IoU) against the IoU threshold, "
    "for the instances from the reference's and pix2pix's predicted boundaries, against CellProfiler labels.",
    "fig7": "Fig. 7. Nuclei from the reference's predicted boundaries against StarDist2D trained on BF and on the "
    "real DNA channel.",
    "table2": "Table 2. Correlation of CellProfiler features of generated and real images per feature category.",
    "table3": "Table 3. Pixel-space vs latent-space CellResDM: MSE (mean over test images and IF channels, 0-255) "
    "and sampling seconds per image measured in this run.",
    "throughput": "Throughput of every step timed in this run, on this run's machines. seconds_vs_reference: "
    "seconds per image over the reference's in the same step (sampling: its sampling; segmentation: its "
    "boundaries -> instances). Training rows give the wall seconds of the whole training job.",
    "methods": "Methods: enabled in the config, trained (model.pt), sampled (test predictions); perceptual_loss "
    "says whether the GAN methods trained with the VGG perceptual loss (off when VGG weights were absent).",
    "filtering": "Field filtering per plate: total fields, kept, and dropped per reason.",
    "illumination": "Illumination correction per plate and channel: mean intensity of the field corners over the "
    "centre, pooled over kept fields, raw and divided by the plate's illumination functions (1 = even; False in "
    "corrected: the plate has no functions and runs uncorrected).",
    "qc": "Ground-truth QC (synthetic gallery only): CellProfiler labels against the generator's true labels.",
    "profiles_summary": "Per source: wells and selected features; per test the mean mAP over its groups "
    "(replicate: plate x treatment; annotation: plate x mechanism; cross-modal: wells), the mean mAP of a random "
    "ranking and the fraction retrieved (corrected p-value below the threshold).",
    "quality_summary": "Image quality: mean per method and channel.",
    "segmentation_summary": "Segmentation scores pooled over test images at the t-test IoU threshold.",
    "segmentation_ttests": "Segmentation: paired t-tests of the reference against every other source.",
}


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="t")


def _config_summary(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "<p>No config given.</p>"
    plates = config.get("plates", [])
    lines = [
        ("source", config.get("source", "")),
        ("reference method", config.get("reference", "")),
        ("methods", ", ".join(config.get("methods", []))),
    ]
    for split in ("train", "val", "test"):
        lines.append((f"{split} plates", ", ".join(str(p.get("id")) for p in plates if p.get("split") == split)))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in lines)
    full = html.escape(json.dumps(config, indent=1, default=str))
    return f'<table class="t">{rows}</table><details><summary>full config</summary><pre>{full}</pre></details>'


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}
table.t td,table.t th{border:1px solid #ccc;padding:2px 6px;text-align:right}.cap{color:#444;font-size:13px}
.missing{color:#a00}h2{border-bottom:1px solid #ccc;margin-top:1.5em}pre{font-size:11px}"""


def section(key: str, title: str, body: str) -> str:
    """One report section: heading (anchor ``key``), the caption of ``key`` and ``body``."""
    caption = _CAPTIONS.get(key, "")
    return f'<h2 id="{key}">{html.escape(title)}</h2><p class="cap">{html.escape(caption)}</p>{body}'


def profiles_caption(profiles: Mapping[str, Any] | None = None) -> str:
    """Caption of the profiles figure: what mAP is and how its p-values were corrected (``profiles``: the
    config section's ``pvalue_correction``, ``pvalue_ties``, ``permutations``, ``pvalue_threshold``,
    ``normalize``)."""
    p = dict(profiles or {})
    correction = {
        "fdr_bh": "the Benjamini-Hochberg false discovery rate",
        "fdr_by": "the Benjamini-Yekutieli false discovery rate",
        "bonferroni": "Bonferroni",
        "holm": "Holm",
    }.get(p.get("pvalue_correction", "fdr_bh"), str(p.get("pvalue_correction")))
    ties = (
        "null values equal to the observed mAP count as extreme"
        if p.get("pvalue_ties") == "greater_equal"
        else "copairs' rule: only null values above the observed mAP count, so with few negatives a perfect mAP "
        "gets the smallest p-value"
    )
    return (
        "Profiles: do virtual profiles retrieve the same biology as real ones? Per-image CellProfiler features of the "
        "test plates are aggregated to wells (median), normalised per plate to the negative-control wells "
        f"({p.get('normalize', 'mad_robustize')}) and reduced to the features selected on the real profiles "
        "(pycytominer), for the real IF, every method and the BF copy. Average precision (AP) ranks a query "
        "profile's positives among its negatives by cosine similarity; mAP is its mean over queries (1 = every "
        "positive ranked first; the dashed line is the mAP of a random ranking). Replicate retrieval: each treated "
        "well queries its treatment's other wells against the plate's negative controls. Annotation: each "
        "treatment's consensus profile queries the treatments of the same mechanism/target against the others. "
        "Cross-modal: each well's virtual profile queries the real wells of its plate, the same well's real "
        "profile being the one positive. p-values come from copairs' null distribution of AP under random "
        f"rankings ({p.get('permutations', 'several thousand')} permutations; {ties}) and are corrected for multiple "
        f"testing with {correction} over the groups of one source and test; a treatment (well) counts as retrieved "
        f"when its corrected p-value is below {p.get('pvalue_threshold', 0.05)} (numbers above the bars)."
    )


def profiles_section(png: Path, profiles: Mapping[str, Any] | None = None) -> str:
    """The profiles figure with its caption (:func:`profiles_caption`)."""
    title = "Profiles: replicate, mechanism and cross-modal retrieval (mAP)"
    body = f'<p class="cap">{html.escape(profiles_caption(profiles))}</p>{_png_tag(png, title)}'
    return f'<h2 id="profiles">{html.escape(title)}</h2>{body}'


def figure_section(key: str, title: str, png: Path) -> str:
    """A section showing the PNG at ``png``."""
    return section(key, title, _png_tag(png, title))


def table_section(key: str, title: str, table: pd.DataFrame) -> str:
    """A section showing ``table``."""
    return section(key, title, _table_html(table))


def render_page(config: Mapping[str, Any] | None, sections: Sequence[str], missing: Sequence[tuple[str, str]]) -> str:
    """The whole page: config summary, the missing inputs ((item, path looked for)), then ``sections``."""
    missing_html = (
        "<p>None.</p>"
        if not missing
        else "<ul>"
        + "".join(
            f'<li class="missing">{html.escape(item)}: <code>{html.escape(path)}</code></li>' for item, path in missing
        )
        + "</ul>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>CellResDM report</title>'
        f"<style>{_CSS}</style></head><body><h1>CellResDM run report</h1>"
        f"<h2>Run configuration</h2>{_config_summary(config)}"
        f'<h2 id="missing">Missing inputs</h2><p class="cap">Items left out because their input files do not '
        f"exist in this run.</p>{missing_html}" + "".join(sections) + "</body></html>\n"
    )
