r"""Counting conservation laws: $D - \dim\mathrm{Lie}(\theta)$, checked against known ones."""

from collections.abc import Callable

import equinox as eqx
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._lie import _check_options, LieTrace, trace_problem
from ._problem import check_size, jacobian, make_problem
from ._rank import cut, default_min_gap, default_rtol, default_tolerance


class ConservationLaws(eqx.Module):
    r"""The number of conservation laws at θ, as returned by
    [`node_flow.criterion.conservation_laws`][].

    **Fields:**

    - `count`: $D - \dim\mathrm{Lie}(\theta)$, the number of independent conservation laws
      (an upper bound on any set of known ones).
    - `num_params`: $D$.
    - `dim_lie`: $\dim\mathrm{Lie}(\theta)$.
    - `num_known`: the rank of $\partial h(\theta)$ for the known conserved functions `h`
      (0 without them): a lower bound on `count`.
    - `orthogonality`: $\max_i \|P_{\mathrm{Lie}} \nabla h_i\| / \|\nabla h_i\|$, which vanishes
      for true conservation laws (0.0 without known functions).
    - `complete`: whether the known functions are a complete set (`num_known == count`);
      `None` without known functions.
    - `lie`: the [`node_flow.criterion.LieTrace`][] behind the count.
    """

    count: int
    num_params: int
    dim_lie: int
    num_known: int
    orthogonality: float
    complete: bool | None
    lie: LieTrace


def conservation_laws(
    phi: Callable | None,
    theta: PyTree,
    conserved: Callable | None = None,
    *,
    max_depth: int = 5,
    rtol: float | None = None,
    min_gap: float | None = None,
    tolerance: float | None = None,
    batch_size: int = 64,
    key: PRNGKeyArray | None = None,
) -> ConservationLaws:
    r"""Count the conservation laws of φ near θ and check known ones.

    $$N(\theta) = D - \dim\mathrm{Lie}(\theta),\qquad
    h \text{ conserved} \Rightarrow \nabla h(\theta) \perp \mathrm{Lie}(\theta).$$

    With `conserved` (a function θ ↦ array of conserved quantities $h_1, \dots, h_m$), each
    $\nabla h_i(\theta)$ is checked to be orthogonal to the trace (relative residual at most
    `tolerance`), and the rank of $\partial h(\theta)$, a lower bound, is compared with the
    count, an upper bound: they meet for a complete set.

    **Arguments:** as [`node_flow.criterion.lie_trace`][], plus `conserved` and `tolerance`
    (default $100\sqrt{\varepsilon}$) for the orthogonality check.

    **Returns:** a [`node_flow.criterion.ConservationLaws`][].

    **Raises:** `ValueError` if θ is too large to form densely (with the memory figure), if θ
    is a non-generic point (∂φ has a lower rank than at nearby points, e.g. θ = 0), if the
    rank decisions are ambiguous (gap below `min_gap`), if the
    trace did not converge within `max_depth`, if a known function is not conserved (its
    gradient is not orthogonal to the trace), or if the known functions are more numerous
    than the count — each case where a number would be a confident wrong answer.
    """
    name = "conservation_laws"
    _check_options(name, max_depth, batch_size)
    problem = make_problem(phi, theta, name)
    check_size(problem, name)
    dtype = problem.x.dtype
    rtol = default_rtol(dtype) if rtol is None else rtol
    min_gap = default_min_gap(dtype) if min_gap is None else min_gap
    tolerance = default_tolerance(dtype) if tolerance is None else tolerance
    J = np.asarray(jacobian(problem.f, problem.x), dtype=float)
    lie = trace_problem(
        problem,
        J,
        max_depth=max_depth,
        rtol=rtol,
        min_gap=min_gap,
        batch_size=batch_size,
        key=key,
    )
    if not lie.decided:
        raise ValueError(
            f"{name}: the rank decision is ambiguous at this point: singular-value gaps "
            f"{np.asarray(lie.gaps).tolist()} (by bracket depth), smallest trusted {min_gap:.3g}. "
            "θ may be rank-deficient or nearly so; count at a generic nearby point."
        )
    if not lie.generic:
        raise ValueError(
            f"{name}: θ is a non-generic point: rank ∂φ(θ) = {lie.rank_jacobian} but "
            f"{lie.generic_rank_jacobian} at a small random perturbation of θ, so "
            f"D - dim Lie(θ) = {lie.num_conservation_laws} is not the number of conservation "
            "laws near generic points (e.g. θ = 0). Count at a generic point (a random draw, "
            "or θ plus a small random perturbation)."
        )
    if not lie.converged:
        raise ValueError(
            f"{name}: the Lie trace was still growing at max_depth={max_depth} "
            f"(dimensions by depth {lie.dims}); increase max_depth."
        )
    num_known, orthogonality, complete = 0, 0.0, None
    if conserved is not None:
        h, _ = problem.flat(conserved, name, "conserved")
        Jh = np.asarray(jacobian(h, problem.x), dtype=float)
        norms = np.linalg.norm(Jh, axis=1)
        Q = np.asarray(lie.basis, dtype=float)
        rel = np.linalg.norm(Jh @ Q, axis=1) / np.where(norms > 0, norms, 1.0)
        orthogonality = float(rel.max())
        if orthogonality > tolerance:
            i = int(rel.argmax())
            raise ValueError(
                f"{name}: known conserved quantity {i} is not conserved: its gradient has a "
                f"relative component {orthogonality:.3g} > tolerance {tolerance:.3g} along "
                "Lie(θ) (check the function, or the point)."
            )
        s = np.linalg.svd(Jh, compute_uv=False)
        smax = float(s[0]) if s.size else 0.0
        num_known, known_gap, _, _ = cut(s, rtol * smax) if smax > 0 else (0, np.inf, np.inf, 0.0)
        if known_gap < min_gap:
            raise ValueError(
                f"{name}: the rank of the known conserved gradients is ambiguous (gap "
                f"{known_gap:.3g} < {min_gap:.3g})."
            )
        if num_known > lie.num_conservation_laws:
            raise ValueError(
                f"{name}: {num_known} independent known conservation laws exceed the count "
                f"D - dim Lie = {lie.num_conservation_laws}: the trace is too large."
            )
        complete = num_known == lie.num_conservation_laws
    return ConservationLaws(
        count=lie.num_conservation_laws,
        num_params=lie.num_params,
        dim_lie=lie.dim,
        num_known=int(num_known),
        orthogonality=orthogonality,
        complete=complete,
        lie=lie,
    )


def num_conservation_laws(
    phi: Callable | None,
    theta: PyTree,
    conserved: Callable | None = None,
    *,
    max_depth: int = 5,
    rtol: float | None = None,
    min_gap: float | None = None,
    tolerance: float | None = None,
    batch_size: int = 64,
    key: PRNGKeyArray | None = None,
) -> int:
    r"""The number of independent conservation laws of φ near θ, $D - \dim\mathrm{Lie}(\theta)$.

    A shortcut for `conservation_laws(...).count`; see
    [`node_flow.criterion.conservation_laws`][] for the arguments, the check of known
    conserved functions, and the `ValueError`s raised instead of an unreliable count.
    """
    return conservation_laws(
        phi,
        theta,
        conserved,
        max_depth=max_depth,
        rtol=rtol,
        min_gap=min_gap,
        tolerance=tolerance,
        batch_size=batch_size,
        key=key,
    ).count
