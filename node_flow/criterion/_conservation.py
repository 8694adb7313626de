r"""Counting conservation laws: $D - \dim\mathrm{Lie}(\theta)$, checked against known ones."""

import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._lie import _candidates, _check_options, _project_out, LieTrace, trace_problem
from ._problem import (
    _PERTURBATION,
    check_size,
    jacobian,
    make_problem,
    MAX_DENSE_ENTRIES,
    numpy_rng,
)
from ._rank import cut, default_min_gap, default_rtol, default_tolerance, gap_of
from .liftings._linear import DeepLinear


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

    A two-layer [`liftings.deep_linear`][node_flow.criterion.liftings.deep_linear] lifting too
    large to form densely (without `conserved`) is counted by
    [`node_flow.criterion.two_layer_conservation_laws`][] (structured ranks, same gaps).

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
    if conserved is None and _structured(phi, problem):
        return two_layer_conservation_laws(
            theta, max_depth=max_depth, rtol=rtol, min_gap=min_gap, batch_size=batch_size,
            key=key,
        )  # fmt: skip
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
    _raise_if_unreliable(name, lie, min_gap, max_depth)
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


def _factor_spectra(U1: np.ndarray, U2: np.ndarray) -> tuple[np.ndarray, ...]:
    r"""Squared singular values of $U_2$ padded to its row and column counts, of $U_1$ padded
    likewise, and the eigenvectors $E_2$ of $U_2^\top U_2$, $E_1$ of $U_1 U_1^\top$ (from SVDs
    of the factors, so that structural zeros stay exact zeros)."""
    n1 = U1.shape[0]
    X2, s2, Y2t = np.linalg.svd(U2)  # U2: n2 × n1
    X1, s1, Y1t = np.linalg.svd(U1)  # U1: n1 × n0
    pad = lambda s, n: np.concatenate([s**2, np.zeros(n - s.size)])
    # U2 U2ᵀ on R^{n2}, U1ᵀ U1 on R^{n0}; U2ᵀ U2 and U1 U1ᵀ on R^{n1}.
    return pad(s2, U2.shape[0]), pad(s1, U1.shape[1]), pad(s2, n1), pad(s1, n1), Y2t.T, X1


def two_layer_conservation_laws(
    theta: tuple,
    *,
    max_depth: int = 5,
    rtol: float | None = None,
    min_gap: float | None = None,
    batch_size: int = 64,
    key: PRNGKeyArray | None = None,
) -> ConservationLaws:
    r"""Count the conservation laws of the two-layer linear lifting $\varphi(U_1, U_2) = U_2U_1$
    with structured rank decisions: no $d \times D$ Jacobian, no $D \times D$ basis.

    The same Lie trace and rank decisions as [`node_flow.criterion.conservation_laws`][]
    (same thresholds and gaps), computed with the structure of the lifting:

    - **Depth 1.** $\partial\varphi\,\partial\varphi^\top A = U_2U_2^\top A + A\,U_1^\top U_1$
      is a Kronecker sum, so the singular values of the Jacobian are
      $\sqrt{p_i + q_j}$ with $p$, $q$ the squared singular values of $U_2$ and $U_1$
      (padded with exact zeros): the rank and its gap from two small SVDs.
    - **Kernel.** $v(X) = (XU_1, -U_2X)$, $X \in \mathbb{R}^{n_1\times n_1}$, lies in
      $\ker\partial\varphi$; its Gram operator $Y \mapsto U_2^\top U_2Y + YU_1U_1^\top$ is a
      Kronecker sum with eigenvalues $a_i + b_j$. When $v$ is injective (a gap decision) and
      $\operatorname{rank}\partial\varphi + n_1^2 = D$, $v$ parametrizes $\ker\partial\varphi$, and
      $\hat c = (E_2^\top (B_1U_1^\top - U_2^\top B_2) E_1) / \sqrt{a_i + b_j}$ are the
      coordinates, in an orthonormal basis of $\ker\partial\varphi$, of the projection
      $P_{\ker}b$ of a bracket $b = (B_1, B_2)$ — the vectors the dense path ranks.
    - **Depth ≥ 2.** Brackets of generic generators as in [`node_flow.criterion.lie_trace`][],
      ranked in these $n_1^2$ coordinates: $O(n_1^2 k^2)$ work for a trace of dimension
      $\operatorname{rank}\partial\varphi + k$, instead of $O(D\,(\operatorname{rank} + k)^2)$.

    **Arguments:** `theta = (U_1, U_2)`, $U_1 \in \mathbb{R}^{n_1\times n_0}$,
    $U_2 \in \mathbb{R}^{n_2\times n_1}$; the options as [`node_flow.criterion.lie_trace`][].

    **Returns:** a [`node_flow.criterion.ConservationLaws`][] whose `lie.basis` is `None`
    (the $D \times \dim$ basis is what this path avoids forming).

    **Raises:** `ValueError` as [`node_flow.criterion.conservation_laws`][] (ambiguous gaps,
    non-generic point, trace still growing), or when $v$ does not parametrize
    $\ker\partial\varphi$ (use the dense path).
    """
    name = "two_layer_conservation_laws"
    _check_options(name, max_depth, batch_size)
    if not (isinstance(theta, tuple | list) and len(theta) == 2):
        raise ValueError(f"{name}: θ must be a pair (U_1, U_2); got {type(theta).__name__}.")
    phi = _TwoLayer()
    problem = make_problem(phi, tuple(theta), name)
    U1, U2 = (np.asarray(U, dtype=float) for U in problem.theta)
    if U1.ndim != 2 or U2.ndim != 2 or U2.shape[1] != U1.shape[0]:
        raise ValueError(
            f"{name}: θ = (U_1, U_2) must be matrices with U_2.shape[1] == U_1.shape[0]; "
            f"got shapes {U1.shape} and {U2.shape}."
        )
    dtype = problem.x.dtype
    rtol = default_rtol(dtype) if rtol is None else rtol
    min_gap = default_min_gap(dtype) if min_gap is None else min_gap
    start = time.perf_counter()
    rank, gap, coords = _structured_kernel(name, U1, U2, rtol, min_gap, problem.num_params)
    dims, gaps, Q, num_brackets, converged = _trace_kernel(
        problem, coords, rank, max_depth, rtol, batch_size, key
    )
    dims, gaps = [rank, *[rank + k for k in dims]], [gap, *gaps]
    nearby = _structured_generic_rank(problem, U1, U2, rank, rtol, key)
    D = problem.num_params
    lie = LieTrace(
        dim=rank + Q.shape[1], num_params=D, num_conservation_laws=D - rank - Q.shape[1],
        rank_jacobian=rank, basis=None, dims=tuple(dims),
        gaps=jax.device_put(np.asarray(gaps, dtype=dtype)),
        decided=bool(np.all(np.asarray(gaps) >= min_gap)), converged=bool(converged),
        generic=nearby == rank, generic_rank_jacobian=nearby, rtol=float(rtol),
        min_gap=float(min_gap), num_brackets=num_brackets, seconds=time.perf_counter() - start,
    )  # fmt: skip
    _raise_if_unreliable(name, lie, min_gap, max_depth)
    return ConservationLaws(
        count=lie.num_conservation_laws, num_params=D, dim_lie=lie.dim, num_known=0,
        orthogonality=0.0, complete=None, lie=lie,
    )  # fmt: skip


def _structured(phi, problem) -> bool:
    """Whether to count a two-layer deep linear lifting by the structured path: when the
    dense path would refuse it (above `MAX_DENSE_ENTRIES`)."""
    D, d = problem.num_params, problem.num_outputs
    return (
        isinstance(phi, DeepLinear) and len(phi.widths) == 3 and d * D + D * D > MAX_DENSE_ENTRIES
    )


class _TwoLayer(eqx.Module):
    def __call__(self, theta):
        U1, U2 = theta
        return U2 @ U1


def _jacobian_singular_values(U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
    p, q, *_ = _factor_spectra(U1, U2)
    return np.sqrt(p[:, None] + q[None, :]).ravel()


def _structured_kernel(name, U1, U2, rtol, min_gap, D):
    """Depth-1 rank and gap, and the map bracket ↦ orthonormal kernel coordinates."""
    s = _jacobian_singular_values(U1, U2)
    smax = float(s.max())
    if smax == 0:
        raise ValueError(f"{name}: θ = 0 is a non-generic point (∂φ = 0); count elsewhere.")
    rank, gap, _, _ = cut(s, rtol * smax)
    _, _, a, b, E2, E1 = _factor_spectra(U1, U2)
    g = np.sqrt(a[:, None] + b[None, :])
    n1 = U1.shape[0]
    v_rank, v_gap, _, _ = cut(g.ravel(), rtol * float(g.max()))
    if v_rank != n1 * n1 or v_gap < min_gap or rank + n1 * n1 != D:
        raise ValueError(
            f"{name}: X ↦ (X U_1, -U_2 X) does not parametrize ker ∂φ here (rank ∂φ = "
            f"{rank}, n_1² = {n1 * n1}, D = {D}, smallest Gram singular value gap {v_gap:.3g}); "
            "use node_flow.criterion.conservation_laws (the dense path)."
        )
    n_in = U1.shape[1]

    def coords(values: np.ndarray) -> np.ndarray:
        """Rows of `values` are brackets (vec U_1-part, vec U_2-part) in θ's order."""
        B1 = values[:, : n1 * n_in].reshape(-1, n1, n_in)
        B2 = values[:, n1 * n_in :].reshape(-1, U2.shape[0], n1)
        M = B1 @ U1.T - np.swapaxes(U2, 0, 1)[None] @ B2
        return ((E2.T[None] @ M @ E1) / g).reshape(values.shape[0], -1).T

    return rank, gap, coords


def _trace_kernel(problem, coords, rank, max_depth, rtol, batch_size, key):
    """The Lie trace's part in ker ∂φ, depth by depth, in orthonormal kernel coordinates
    (the loop of `trace_problem`, on $n_1^2$ instead of $D$ coordinates)."""
    size = coords(np.zeros((1, problem.num_params))).shape[0]
    batch_size = min(batch_size, problem.num_params + 1)  # as `trace_problem`
    Q = np.zeros((size, 0))
    dims, gaps, num_brackets, converged = [], [], 0, size == 0
    rng = numpy_rng(key, 0)
    depth = 1
    while not converged and depth < max_depth:
        depth += 1
        lo, hi, added = math.inf, 0.0, 0
        while Q.shape[1] < size:
            a = rng.standard_normal((batch_size, depth, problem.num_outputs))
            values, scales = _candidates(problem.f, problem.x, jax.device_put(a))
            values, scales = np.asarray(values, dtype=float), np.asarray(scales, dtype=float)
            num_brackets += batch_size
            C = coords(values / np.where(scales > 0, scales, 1.0)[:, None])
            C = _project_out(Q, C)
            U, sv, _ = np.linalg.svd(C, full_matrices=False)
            new, _, kept_min, dropped_max = cut(sv, rtol)
            if new:
                lo = min(lo, kept_min)
                Q = np.concatenate([Q, np.linalg.qr(_project_out(Q, U[:, :new]))[0]], axis=1)
                added += new
            if new < sv.size:
                hi = max(hi, dropped_max)
                break
        gaps.append(gap_of(lo, hi, rtol))
        dims.append(Q.shape[1])
        converged = added == 0 or Q.shape[1] == size
    return dims, gaps, Q, num_brackets, converged


def _structured_generic_rank(problem, U1, U2, rank, rtol, key) -> int:
    """`generic_rank` with the structured singular values (same perturbation)."""
    x = np.asarray(problem.x, dtype=float)
    scale = max(float(np.linalg.norm(x)) / np.sqrt(x.size), 1.0)
    y = x + _PERTURBATION * scale * numpy_rng(key, 2).standard_normal(x.size)
    V1, V2 = y[: U1.size].reshape(U1.shape), y[U1.size :].reshape(U2.shape)
    s = _jacobian_singular_values(V1, V2)
    return max(rank, int(np.sum(s > rtol * float(s.max()))))


def _raise_if_unreliable(name: str, lie: LieTrace, min_gap: float, max_depth: int) -> None:
    """The `ValueError`s instead of a count that would be a confident wrong answer."""
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
