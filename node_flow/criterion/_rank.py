r"""Numerical rank decisions with the singular-value gap behind them.

A rank decision keeps the singular values above a threshold $\tau$. Its **gap** is the ratio
$s_{\mathrm{kept,min}} / s_{\mathrm{dropped,max}}$ across the cut; when one side is empty the
threshold itself stands in for it (so the gap is how far the values clear $\tau$). A decision is
*clear* when its gap is at least `min_gap`; otherwise the routines answer "undecided".
"""

import math

import numpy as np


def default_rtol(dtype) -> float:
    r"""$\sqrt{\varepsilon}$ of `dtype` (1.5e-8 in float64): far above the rounding floor
    $\approx \varepsilon$ of a singular value that should vanish, far below the smallest
    singular values of generic points."""
    return float(np.sqrt(np.finfo(dtype).eps))


def default_min_gap(dtype) -> float:
    r"""$\varepsilon^{-1/4}$ (≈ 8e3 in float64): a rank cut is trusted only when the values on
    either side differ by more than a quarter of the available decades."""
    return float(np.finfo(dtype).eps ** -0.25)


def default_tolerance(dtype) -> float:
    r"""$100\sqrt{\varepsilon}$ (≈ 1.5e-6 in float64) for relative residuals: a basis vector whose
    singular value clears the rank threshold $\sqrt{\varepsilon}$ carries a direction error
    $\lesssim \varepsilon / \sqrt{\varepsilon} = \sqrt{\varepsilon}$; the factor 100 is margin."""
    return 100.0 * default_rtol(dtype)


def cut(s: np.ndarray, threshold: float) -> tuple[int, float, float, float]:
    """Rank `#{s > threshold}`, its gap, the smallest kept and the largest dropped value."""
    s = np.asarray(s, dtype=float)
    kept, dropped = s[s > threshold], s[s <= threshold]
    lo = float(kept.min()) if kept.size else float(threshold)
    hi = float(dropped.max()) if dropped.size else float(threshold)
    gap = lo / hi if hi > 0 else math.inf
    return int(kept.size), gap, lo, hi


def gap_of(lo: float, hi: float) -> float:
    """The gap of a decision whose smallest kept value is `lo`, largest dropped `hi`."""
    return lo / hi if hi > 0 else math.inf
