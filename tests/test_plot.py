"""`node_flow.plot` with the Agg backend: fits against `numpy.polyfit`, the legend against
the returned fit, and the drawn data against closed forms of synthetic trajectories."""

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

import node_flow as nf


matplotlib.use("Agg")


def new_axes():
    return Figure().add_subplot()  # no pyplot state: nothing to close


def test_node_flow_imports_matplotlib_only_inside_functions():
    """`import node_flow` must not need matplotlib or a display: no module-level import."""
    for path in Path(nf.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", "")]
            if isinstance(node, ast.Import | ast.ImportFrom):
                assert not any((n or "").startswith("matplotlib") for n in names), path


def test_convergence_fit_recovers_a_known_slope_and_matches_polyfit():
    hs = np.geomspace(1e-3, 1e-1, 7)
    exact = nf.plot.loglog_fit(hs, 3.0 * hs**1.5)
    # Noise-free power law: slope and intercept exact up to round-off of 7 logs.
    assert abs(exact.slope - 1.5) < 1e-12 and abs(exact.intercept - np.log(3.0)) < 1e-11
    assert exact.stderr < 1e-12 and exact.num_points == 7
    noisy = 3.0 * hs**1.5 * np.exp(0.05 * np.random.default_rng(0).normal(size=7))
    fit = nf.plot.loglog_fit(hs, noisy)
    # numpy.polyfit solves the same least-squares problem by another route (scaled
    # Vandermonde, SVD); its covariance is scaled by the residual over k − 2 dof.
    (slope, intercept), cov = np.polyfit(np.log(hs), np.log(noisy), 1, cov=True)
    assert abs(fit.slope - slope) < 1e-12 and abs(fit.intercept - intercept) < 1e-12
    assert abs(fit.stderr - np.sqrt(cov[0, 0])) < 1e-12 * max(1, np.sqrt(cov[0, 0]))
    assert np.isnan(nf.plot.loglog_fit(hs[:2], noisy[:2]).stderr)


@pytest.mark.parametrize("label, fit_from", [("GD", None), (None, 2)])
def test_convergence_legend_shows_the_returned_fit(label, fit_from):
    hs = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
    errors = 0.7 * hs * (1 + 2 * hs)  # order 1 asymptotically, curved at large h
    ax, fit = nf.plot.convergence(hs, errors, ax=new_axes(), label=label, fit_from=fit_from)
    start = fit_from or 0
    np.testing.assert_equal(tuple(fit), tuple(nf.plot.loglog_fit(hs[start:], errors[start:])))
    (text,) = [t.get_text() for t in ax.get_legend().get_texts()]
    m = re.fullmatch(r"(?:(\w+): )?slope (-?[\d.]+) ± ([\d.e+-]+)", text)
    assert m is not None, text
    assert m.group(1) == label
    assert abs(float(m.group(2)) - fit.slope) <= 5e-4  # printed with 3 decimals
    assert abs(float(m.group(3)) - fit.stderr) <= 5e-4 + 0.05 * fit.stderr
    data, fitted = ax.get_lines()
    np.testing.assert_array_equal(data.get_xdata(), hs)
    np.testing.assert_array_equal(data.get_ydata(), errors)
    h = fitted.get_xdata()
    assert h.min() == hs[start:].min() and h.max() == hs[start:].max()
    np.testing.assert_allclose(fitted.get_ydata(), np.exp(fit.intercept) * h**fit.slope)
    if fit_from:  # the tail is closer to order 1 than the whole range
        assert abs(fit.slope - 1) < abs(nf.plot.loglog_fit(hs, errors).slope - 1)


@pytest.mark.parametrize(
    "hs, errors, fit_from, match",
    [
        ([0.1, 0.05], [1e-3, 0.0], None, r"errors\[1\] = 0.0 is not positive"),
        ([0.1, np.nan], [1e-3, 1e-4], None, r"hs\[1\] = nan"),
        ([0.1, 0.05, 0.02], [1e-3, 1e-4], None, "one length"),
        ([0.1, 0.05, 0.02], [1e-3, 1e-4, 1e-5], 2, r"fit_from = 2 must be an int in \[0, 1\]"),
        ([0.1, 0.05, 0.02], [1e-3, 1e-4, 1e-5], 0.5, "fit_from = 0.5"),
        ([0.1, 0.05, 0.02], [1e-3, 1e-4, 1e-5], True, "fit_from = True"),
        ([[0.1, 0.05]], [[1e-3, 1e-4]], None, "must be 1-D"),
    ],
)
def test_convergence_refuses_bad_input(hs, errors, fit_from, match):
    with pytest.raises(ValueError, match="convergence: .*" + match):
        nf.plot.convergence(hs, errors, ax=new_axes(), fit_from=fit_from)


def synthetic_solution(with_models=True):
    """z(t) = Q diag(3 + t, 1, 0.1 t) R (known singular values), and a depth-3 network
    scaled as U_j(t) = (1 + t) U_j(0), so C_j(t) = (1 + t)² C_j(0) exactly."""
    rng = np.random.default_rng(0)
    ts = np.array([0.0, 0.25, 0.5, 1.0, np.inf])  # inf: after a terminating event
    Q, R = (np.linalg.qr(rng.normal(size=(n, n)))[0] for n in (4, 3))
    zs = np.stack([Q[:, :3] @ np.diag([3 + t, 1, 0.1 * t]) @ R if np.isfinite(t) else
                   np.full((4, 3), np.inf) for t in ts])  # fmt: skip
    U = [rng.normal(size=shape) for shape in [(5, 3), (2, 5), (4, 2)]]
    scale = np.where(np.isfinite(ts), 1 + ts, np.inf)[:, None, None]
    models = nf.LinearNetwork(U)
    models = jax.tree.map(lambda U: jnp.asarray(scale * U), models) if with_models else None
    laws = [U[j + 1].T @ U[j + 1] - U[j] @ U[j].T for j in range(2)]  # C_j(0), in NumPy
    return SimpleNamespace(ts=ts, zs=zs, losses=np.exp(-ts), models=models), laws


def test_flow_plots_draw_one_line_per_quantity_with_the_closed_form_data():
    sol, laws = synthetic_solution()
    t = sol.ts[:4]
    lines = nf.plot.singular_values(sol, ax=new_axes()).get_lines()
    assert len(lines) == 3
    for line, sigma in zip(lines, [3 + t, np.ones(4), 0.1 * t]):
        np.testing.assert_allclose(line.get_ydata(), sigma, atol=1e-13)
        np.testing.assert_array_equal(line.get_xdata(), t)
    (line,) = nf.plot.loss(sol, ax=new_axes()).get_lines()
    np.testing.assert_array_equal(line.get_ydata(), np.exp(-t))
    lines = nf.plot.conservation(sol, ax=new_axes()).get_lines()
    assert len(lines) == 2  # depth 3: C_1, C_2 (of different sizes 5 and 2)
    for line, C in zip(lines, laws):
        expected = ((1 + t[1:]) ** 2 - 1) * np.linalg.norm(C)
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)


def test_conservation_of_a_residual_network_matches_numpy_laws():
    """U_k = I + A_k/L with A(t) = A₀ + t B: C_k(t) formed directly in NumPy."""
    rng = np.random.default_rng(3)
    A0, B, ts = rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 2)), np.array([0.0, 0.5, 1])
    As = A0 + ts[:, None, None, None] * B
    models = jax.tree.map(jnp.asarray, nf.ResidualLinearNetwork(A0))
    models = eqx.tree_at(lambda m: m.A, models, jnp.asarray(As))
    sol = SimpleNamespace(ts=ts, zs=None, losses=None, models=models)
    U = np.eye(2) + As / 3
    C = np.swapaxes(U[:, 1:], -1, -2) @ U[:, 1:] - U[:, :-1] @ np.swapaxes(U[:, :-1], -1, -2)
    lines = nf.plot.conservation(sol, ax=new_axes()).get_lines()
    assert len(lines) == 2
    for j, line in enumerate(lines):
        expected = np.linalg.norm(C[1:, j] - C[0, j], axis=(-2, -1))
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)


def test_conservation_refuses_solutions_without_linear_models():
    sol, _ = synthetic_solution(with_models=False)
    with pytest.raises(ValueError, match="conservation: sol.models is None"):
        nf.plot.conservation(sol, ax=new_axes())
    sol.models = {"not": jnp.ones(3)}
    with pytest.raises(TypeError, match="conservation: sol.models must be a LinearNetwork or"):
        nf.plot.conservation(sol, ax=new_axes())
    with pytest.raises(ValueError, match=r"singular_values: sol.zs must be .* got shape \(5,\)"):
        nf.plot.singular_values(SimpleNamespace(ts=sol.ts, zs=sol.losses), ax=new_axes())


def test_plots_without_axes_draw_on_new_figures():
    import matplotlib.pyplot as plt

    sol, _ = synthetic_solution()
    try:
        axes = [f(sol) for f in (nf.plot.singular_values, nf.plot.loss, nf.plot.conservation)]
        axes.append(nf.plot.convergence([0.1, 0.05], [1e-2, 5e-3])[0])
        assert [len(ax.get_lines()) for ax in axes] == [3, 1, 2, 2]
        assert len({id(ax.figure) for ax in axes}) == 4
    finally:
        plt.close("all")


def test_conservation_of_one_descent_step_is_the_exact_identity():
    """A real `gradient_descent` step on z = U₂U₁: C₁ changes by η²(G₂ᵀG₂ − G₁G₁ᵀ)
    exactly (REFERENCES), with G₁ = U₂ᵀ∇ℓ, G₂ = ∇ℓ U₁ᵀ, ∇ℓ = (zX − Y)Xᵀ/N in NumPy.
    The plotted drift is a difference of O(1) matrices: 1e-12 relative to an O(η²) change
    of ~1e-2 leaves a margin of ~1e3 over float64 round-off."""
    rng = np.random.default_rng(5)
    X, Y, U1, U2 = (rng.normal(size=s) for s in [(2, 4), (2, 4), (3, 2), (2, 3)])
    lr = 0.1
    sol = nf.gradient_descent(nf.LinearNetwork((U1, U2)), nf.LeastSquares(X, Y), lr, 1)
    grad = (U2 @ U1 @ X - Y) @ X.T / 4
    G1, G2 = U2.T @ grad, grad @ U1.T
    expected = lr**2 * np.linalg.norm(G2.T @ G2 - G1 @ G1.T)
    (line,) = nf.plot.conservation(sol, ax=new_axes()).get_lines()
    np.testing.assert_allclose(line.get_xdata(), [lr], rtol=1e-15)
    np.testing.assert_allclose(line.get_ydata(), [expected], rtol=1e-12)


def test_plots_take_a_label_and_line_styles_for_several_flows_on_one_axes():
    """Two flows on one `Axes`: one legend entry per flow, the styles on every line, and
    the data unchanged (the closed forms of `synthetic_solution`)."""
    sol, laws = synthetic_solution()
    t = sol.ts[:4]
    ax = new_axes()
    nf.plot.singular_values(sol, ax=ax, label="a", color="C3", ls="--")
    nf.plot.singular_values(sol, ax=ax, label="b", color="C0")
    lines = ax.get_lines()
    assert [line.get_color() for line in lines] == ["C3"] * 3 + ["C0"] * 3
    assert {line.get_linestyle() for line in lines[:3]} == {"--"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    np.testing.assert_allclose(lines[3].get_ydata(), 3 + t, atol=1e-13)
    ax = nf.plot.loss(sol, ax=new_axes(), label="run", color="C2")
    (line,) = ax.get_lines()
    assert line.get_color() == "C2" and line.get_label() == "run"
    np.testing.assert_array_equal(line.get_ydata(), np.exp(-t))
    ax = nf.plot.conservation(sol, ax=new_axes(), label="GD", color="C1")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["GD: $C_{1}$", "GD: $C_{2}$"]
    assert {line.get_color() for line in ax.get_lines()} == {"C1"}
    ax, fit = nf.plot.convergence(
        [0.1, 0.05, 0.025], [1e-2, 5e-3, 2.5e-3], ax=new_axes(), color="C4", marker="x"
    )
    data, fitted = ax.get_lines()
    assert data.get_marker() == "x" and data.get_color() == fitted.get_color() == "C4"
    assert abs(fit.slope - 1) < 1e-12  # e = h/10 exactly
