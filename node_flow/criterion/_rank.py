r"""Numerical rank decisions with the singular-value gap behind them.

A rank decision keeps the singular values above a threshold $\tau$. Its **gap** is

$$g = \min\Big(\frac{s_{\mathrm{kept,min}}}{\tau}, \frac{\tau}{s_{\mathrm{dropped,max}}}\Big)$$

(an empty side counts as $+\infty$): how many times every singular value clears the threshold,
on its own side. The classical gap $s_{\mathrm{kept,min}} / s_{\mathrm{dropped,max}}$ is at least
$g^2$, but $g$ also catches a dropped value that is small yet far above rounding (a point
*near* a rank-deficient one), which the classical ratio would call clear. A decision is *clear*
when $g \ge$ `min_gap`; otherwise the routines answer "undecided".
"""

import math

import numpy as np


def default_rtol(dtype) -> float:
    r"""$\sqrt{\varepsilon}$ of `dtype` (1.5e-8 in float64): far above the rounding floor
    $\approx \varepsilon$ of a singular value that should vanish, far below the smallest
    singular values of generic points."""
    return float(np.sqrt(np.finfo(dtype).eps))


def default_min_gap(dtype) -> float:
    r"""100: kept singular values must exceed $100\tau$ (1.5e-6 relative in float64) and dropped
    ones stay below $\tau/100$ (1.5e-10), far from the rounding floor $\approx \varepsilon$."""
    del dtype
    return 100.0


def default_tolerance(dtype) -> float:
    r"""$100\sqrt{\varepsilon}$ (≈ 1.5e-6 in float64) for relative residuals in $[0, 1]$. A basis
    vector from a clear rank decision has singular value $\ge 100\sqrt{\varepsilon}$, hence a
    direction error $\lesssim \varepsilon / (100\sqrt{\varepsilon}) = \sqrt{\varepsilon}/100$,
    which is also the residual it can cause; the tolerance sits $10^4$ above that floor and
    $10^3$ below the smallest failures seen in practice (≥ 1e-3)."""
    return 100.0 * default_rtol(dtype)


def cut(s: np.ndarray, threshold: float) -> tuple[int, float, float, float]:
    """Rank `#{s > threshold}`, its gap, the smallest kept and the largest dropped value
    (`inf` and `0.0` for an empty side)."""
    s = np.asarray(s, dtype=float)
    kept, dropped = s[s > threshold], s[s <= threshold]
    lo = float(kept.min()) if kept.size else math.inf
    hi = float(dropped.max()) if dropped.size else 0.0
    return int(kept.size), gap_of(lo, hi, threshold), lo, hi


def gap_of(lo: float, hi: float, threshold: float) -> float:
    """The gap of a decision at `threshold` whose smallest kept value is `lo` (`inf` if none)
    and largest dropped value `hi` (`0.0` if none)."""
    above = lo / threshold
    below = threshold / hi if hi > 0 else math.inf
    return min(above, below)
