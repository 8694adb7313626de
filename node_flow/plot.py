r"""Plots of flows and of convergence studies (matplotlib).

Every function draws into the `Axes` it is given (`ax=`), or into a new figure, and
returns that `Axes`. matplotlib is imported only when a new figure is needed, so
`import node_flow` works without matplotlib's display backends; with `ax=` given, no
`pyplot` state is touched (safe with the Agg backend and in threads).

The flow plots take anything with the fields of a [`node_flow.FlowSolution`][] they
use (`ts`, `zs`, `losses`, `models`), e.g. a [`node_flow.DescentSolution`][] too; save
times that are `inf` (after a terminating event) are dropped.
"""

from typing import Any, NamedTuple

import numpy as np

from ._conservation import conservation_laws
from ._linear import LinearNetwork
from ._residual import ResidualLinearNetwork


class ConvergenceFit(NamedTuple):
    r"""A least-squares fit $\log e = \text{slope} \cdot \log h + \text{intercept}$.

    **Fields:** `slope` (the fitted order), `stderr` (its standard error,
    $\sqrt{\hat\sigma^2 [(A^\top A)^{-1}]_{11}}$ with $\hat\sigma^2$ the residual variance
    over $k - 2$ degrees of freedom; NaN for $k = 2$ points), `intercept`, and
    `num_points` ($k$).
    """

    slope: float
    stderr: float
    intercept: float
    num_points: int


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 3.6))[1]


def _positive_1d(fname: str, name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{fname}: {name} must be 1-D; got shape {x.shape}.")
    if not np.all(np.isfinite(x) & (x > 0)):
        k = int(np.argmin(np.isfinite(x) & (x > 0)))
        raise ValueError(
            f"{fname}: {name}[{k}] = {x[k]} is not positive and finite; a log–log fit "
            f"needs {name} > 0. Drop that point (an error of exactly 0 has no order)."
        )
    return x


def loglog_fit(hs, errors) -> ConvergenceFit:
    r"""Least-squares fit of $\log e$ against $\log h$: the order of convergence.

    **Arguments:** `hs`, `errors`: 1-D, positive and finite, of one length $k \ge 2$.

    **Returns:** a [`node_flow.plot.ConvergenceFit`][].
    """
    hs = _positive_1d("loglog_fit", "hs", hs)
    errors = _positive_1d("loglog_fit", "errors", errors)
    if hs.shape != errors.shape or len(hs) < 2:
        raise ValueError(
            "loglog_fit: hs and errors need one length k ≥ 2 (two points define a slope); "
            f"got {len(hs)} and {len(errors)}."
        )
    A = np.stack([np.log(hs), np.ones_like(hs)], axis=1)
    b = np.log(errors)
    coef = np.linalg.lstsq(A, b, rcond=None)[0]
    dof = len(hs) - 2
    if dof > 0:
        sigma2 = float(np.sum((A @ coef - b) ** 2)) / dof
        stderr = float(np.sqrt(sigma2 * np.linalg.inv(A.T @ A)[0, 0]))
    else:
        stderr = float("nan")
    return ConvergenceFit(float(coef[0]), stderr, float(coef[1]), len(hs))


def _slope_text(fit: ConvergenceFit) -> str:
    if np.isnan(fit.stderr):
        return f"slope {fit.slope:.3f} ({fit.num_points} points)"
    stderr = f"{fit.stderr:.3f}" if fit.stderr >= 5e-4 else f"{fit.stderr:.1e}"
    return f"slope {fit.slope:.3f} ± {stderr}"


def convergence(hs, errors, *, ax=None, label=None, fit_from=None, **line_kwargs):
    r"""A log–log error plot with the fitted order of convergence.

    Draws `errors` against `hs` (markers and a solid line) and the fitted line
    $e = e^{\text{intercept}} h^{\text{slope}}$ (dashed, same colour) over the fitted
    points; the legend entry reads `"{label}: slope s ± stderr"`.

    **Arguments:**

    - `hs`: the step sizes (or resolutions: depths, grid sizes), 1-D, positive.
    - `errors`: the errors, positive, same length.
    - `ax`: a matplotlib `Axes` to draw into; a new figure when `None`.
    - `label`: the legend label of the curve.
    - `fit_from`: the index of the first point in the fit (`hs[fit_from:]`), to leave out
      a pre-asymptotic regime; `None` fits all points. At least two points must remain.
    - `line_kwargs`: passed to `Axes.loglog` for the data (default markers `"o"`, solid
      line; e.g. `color`, `marker`, `ls`); the fitted line takes the data's colour.

    **Returns:** `(ax, fit)`: the `Axes` and the [`node_flow.plot.ConvergenceFit`][].
    """
    hs = _positive_1d("convergence", "hs", hs)
    errors = _positive_1d("convergence", "errors", errors)
    if hs.shape != errors.shape:
        raise ValueError(
            f"convergence: hs and errors must have one length; got {len(hs)} and {len(errors)}."
        )
    start = 0 if fit_from is None else fit_from
    if (
        isinstance(start, bool)
        or not isinstance(start, int | np.integer)
        or not 0 <= start <= len(hs) - 2
    ):
        raise ValueError(
            f"convergence: fit_from = {fit_from!r} must be an int in [0, {len(hs) - 2}] so "
            f"that at least two of the {len(hs)} points are fitted."
        )
    fit = loglog_fit(hs[start:], errors[start:])
    ax = _axes(ax)
    text = _slope_text(fit)
    style = {"marker": "o", "ls": "-"} | line_kwargs
    (line,) = ax.loglog(hs, errors, label=f"{label}: {text}" if label else text, **style)
    h = np.geomspace(hs[start:].min(), hs[start:].max(), 2)
    ax.loglog(h, np.exp(fit.intercept) * h**fit.slope, "--", color=line.get_color(), lw=1)
    _label_points(ax, hs)
    ax.set_xlabel(ax.get_xlabel() or "h")
    ax.set_ylabel(ax.get_ylabel() or "error")
    ax.legend(fontsize="small")
    return ax, fit


def _label_points(ax, hs: np.ndarray) -> None:
    """Under two decades of h, matplotlib labels minor ticks until they overlap: label the
    points themselves instead."""
    if hs.max() / hs.min() < 100:
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(hs, [f"{h:g}" for h in hs])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _finite_times(fname: str, sol) -> np.ndarray:
    ts = np.asarray(sol.ts, dtype=float)
    keep = np.isfinite(ts)
    if not keep.any():
        raise ValueError(f"{fname}: the solution has no finite save time (sol.ts = {ts}).")
    return keep


def singular_values(sol, *, ax=None, label=None, **line_kwargs):
    r"""The singular values $\sigma_1(z(t)) \ge \sigma_2(z(t)) \ge \dots$ along a flow,
    one line each, against $t$.

    **Arguments:**

    - `sol`: a solution whose `zs` are matrices (shape `(times, n_out, n_in)`).
    - `ax`: an `Axes`, or `None` for a new figure.
    - `label`: one legend entry for all the lines of this flow (several flows on one
      `Axes`); `None` labels each line $\sigma_k$.
    - `line_kwargs`: passed to `Axes.plot` for every line (e.g. `color`, `ls`, `lw`).

    **Returns:** the `Axes`.
    """
    keep = _finite_times("singular_values", sol)
    zs = np.asarray(sol.zs)
    if zs.ndim != 3:
        raise ValueError(
            "singular_values: sol.zs must be a time series of matrices (times, n_out, n_in); "
            f"got shape {zs.shape}."
        )
    sigma = np.linalg.svd(zs[keep], compute_uv=False)
    ax = _axes(ax)
    ts = np.asarray(sol.ts, dtype=float)[keep]
    for k in range(sigma.shape[1]):
        name = f"$\\sigma_{{{k + 1}}}$" if label is None else (label if k == 0 else None)
        ax.plot(ts, sigma[:, k], label=name, **line_kwargs)
    ax.set_xlabel(ax.get_xlabel() or "t")
    ax.set_ylabel(ax.get_ylabel() or "singular values of z")
    if label is not None or sigma.shape[1] <= 10:
        ax.legend(fontsize="small")
    return ax


def loss(sol, *, ax=None, label=None, **line_kwargs):
    r"""The loss $\ell(z(t))$ along a flow, on a logarithmic scale.

    **Arguments:** `sol`, a solution with `ts` and `losses`; `ax`, an `Axes` or `None`;
    `label`, the legend entry of the line (a legend is drawn when given); `line_kwargs`,
    passed to `Axes.semilogy` (e.g. `color`, `ls`).

    **Returns:** the `Axes`.
    """
    keep = _finite_times("loss", sol)
    ax = _axes(ax)
    ts = np.asarray(sol.ts, dtype=float)[keep]
    ax.semilogy(ts, np.asarray(sol.losses)[keep], label=label, **line_kwargs)
    ax.set_xlabel(ax.get_xlabel() or "t")
    ax.set_ylabel(ax.get_ylabel() or "loss")
    if label is not None:
        ax.legend(fontsize="small")
    return ax


def _conservation_drift(models: Any) -> np.ndarray:
    """`‖C_j(t) − C_j(t_0)‖_F` of models with a leading time axis, shape `(times, L − 1)`."""
    laws = conservation_laws(models)
    laws = [np.asarray(C) for C in laws] if isinstance(laws, tuple) else np.swapaxes(laws, 0, 1)
    return np.stack([np.linalg.norm(C - C[:1], axis=(-2, -1)) for C in laws], axis=1)


def conservation(sol, *, ax=None, label=None, **line_kwargs):
    r"""The drift $\|C_j(t) - C_j(t_0)\|_F$ of each conservation law along a flow (one line
    per $j$, logarithmic scale; $t_0$ itself, where the drift is 0, is left out).

    An exact flow conserves every $C_j$: the drift measures the integration error (or,
    for gradient descent, the $O(\eta^2)$ change per step).

    **Arguments:** `sol`, a solution of a [`node_flow.LinearNetwork`][] or
    [`node_flow.ResidualLinearNetwork`][] flow with its `models` saved; `ax`, an `Axes` or
    `None`.

    **Returns:** the `Axes`.
    """
    if sol.models is None:
        raise ValueError(
            "conservation: sol.models is None (an intrinsic flow, or a run with "
            "save_models=False), so there are no parameters to take conservation laws of. "
            "Run `node_flow.gradient_flow` or `node_flow.gradient_descent` on a "
            "LinearNetwork or ResidualLinearNetwork with save_models=True (the default)."
        )
    if not isinstance(sol.models, LinearNetwork | ResidualLinearNetwork):
        raise TypeError(
            "conservation: sol.models must be a LinearNetwork or a ResidualLinearNetwork "
            f"(with a time axis), the models with conservation laws; got "
            f"{type(sol.models).__name__}."
        )
    keep = _finite_times("conservation", sol)
    drift = _conservation_drift(sol.models)[keep]
    ts = np.asarray(sol.ts, dtype=float)[keep]
    ax = _axes(ax)
    for j in range(drift.shape[1]):
        name = f"$C_{{{j + 1}}}$" if label is None else f"{label}: $C_{{{j + 1}}}$"
        ax.semilogy(ts[1:], drift[1:, j], label=name, **line_kwargs)
    ax.set_xlabel(ax.get_xlabel() or "t")
    ax.set_ylabel(ax.get_ylabel() or r"$\|C_j(t) - C_j(t_0)\|_F$")
    if drift.shape[1] <= 10:
        ax.legend(fontsize="small")
    return ax
