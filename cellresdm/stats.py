"""Paired comparisons of two sources on the same images (image quality and segmentation scores)."""

from __future__ import annotations

import warnings

import numpy as np

#: Significance level of the paired t-tests (the paper's asterisks).
ALPHA = 0.05


def paired_ttest(reference: np.ndarray, other: np.ndarray, higher_is_better: bool = True) -> dict:
    """Paired t-test (scipy.stats.ttest_rel) of per-image values of a reference source against another source.

    Args:
        reference, other: (n,) values on the same n images, in the same order.
        higher_is_better: False for errors (MSE): then the source with the lower mean is the better one.

    Returns:
        n, mean_reference, mean_other, mean_difference (reference - other), t, p, better ("reference", "other"
        or "tie") and significant (p < :data:`ALPHA`). With fewer than two pairs or differences that are all
        equal (zero variance: t is 0/0 or infinite), t and p are NaN and significant is False, without a warning.
    """
    from scipy.stats import ttest_rel

    x = np.asarray(reference, dtype=float)
    y = np.asarray(other, dtype=float)
    d = x - y
    if len(d) < 2 or np.all(d == d[0]):
        t, p = float("nan"), float("nan")
    else:
        with warnings.catch_warnings():  # near-constant differences: scipy's precision-loss notice
            warnings.simplefilter("ignore", RuntimeWarning)
            result = ttest_rel(x, y)
        t, p = float(result.statistic), float(result.pvalue)
    diff = float(d.mean()) if len(d) else float("nan")
    gain = diff if higher_is_better else -diff
    return {
        "n": len(d),
        "mean_reference": float(x.mean()) if len(x) else float("nan"),
        "mean_other": float(y.mean()) if len(y) else float("nan"),
        "mean_difference": diff,
        "t": t,
        "p": p,
        "better": "reference" if gain > 0 else "other" if gain < 0 else "tie",
        "significant": bool(p < ALPHA) if np.isfinite(p) else False,
    }
