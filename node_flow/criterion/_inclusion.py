r"""The kernel-inclusion criterion
$\ker\partial\varphi(\theta) \cap \ker\partial h(\theta) \subseteq \ker\partial M(\theta)$."""

import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._lie import _check_options, LieTrace, trace_problem
from ._problem import check_size, FlatLifting, generic_rank, jacobian, make_problem, numpy_rng
from ._rank import cut, default_min_gap, default_rtol, default_tolerance


_EXACT_BUDGET = 2**15
"""Exact residuals (probing ∂M[v] with every basis vector of R^d) while d·k stays below this;
Gaussian probes beyond."""
_DEFAULT_PROBES = 32


class KernelInclusion(eqx.Module):
    r"""The verdict of the kernel-inclusion criterion at θ, as returned by
    [`node_flow.criterion.kernel_inclusion`][].

    **Fields:**

    - `holds`: `True` if $\ker\partial\varphi \cap \ker\partial h \subseteq \ker\partial M$ to
      within `tolerance`, `False` if a direction of the intersection moves $M$, `None`
      (undecided) when a rank decision was ambiguous, the Lie trace did not converge, or θ is
      a non-generic point where the inclusion holds (e.g. θ = 0, where $\partial M = 0$ while
      it fails at every nearby generic point); `reason` says which.
    - `generic`: whether $\operatorname{rank}\partial\varphi(\theta)$ equals its rank at a
      small random perturbation of θ (`generic_rank_jacobian`). At a non-generic point a
      failure is still reported (a direction of the fibre in the leaf moves $M$ there), never
      a success.
    - `generic_rank_jacobian`: the rank of $\partial\varphi$ at the perturbed point.
    - `residual`: $\rho = \max_{v} \|\partial M(\theta)[v]\|_F \,/\,
      \big(2\,\|\partial\varphi(\theta)\|_2 \max_{v}\|\partial^2\varphi(\theta)[v,\cdot]\|_F\big)$,
      maxima over unit $v$ in the intersection. The denominator bounds the numerator
      ($\partial M[v] = \partial^2\varphi[v,\cdot]\,\partial\varphi^\top + \text{transpose}$), so
      $\rho \in [0, 1]$ is scale-free and basis-independent; the maximizing $v$ is the first
      vector of the right-singular basis of $v \mapsto \partial M[v]$ (`worst_direction`).
    - `tolerance`: the threshold on `residual`.
    - `dim_intersection`: $\dim(\ker\partial\varphi(\theta) \cap \ker\partial h(\theta))$.
    - `basis`: an orthonormal basis of the intersection, $D \times$ `dim_intersection`.
    - `worst_direction`: the unit $v$ of the intersection that moves $M$ most (zeros if the
      intersection is trivial).
    - `num_params`, `rank_jacobian`: $D$ and $\operatorname{rank}\partial\varphi(\theta)$.
    - `gap`, `min_gap`: the smallest singular-value gap among the rank decisions used, and the
      smallest trusted.
    - `probes`: `None` for an exact residual, else the number of Gaussian probes of
      $\partial M[v]$ (an unbiased estimate of the squared Frobenius norms).
    - `lie`: the [`node_flow.criterion.LieTrace`][] used when `conserved=None`.
    - `seconds`: wall-clock time.
    """

    holds: bool | None
    residual: float
    tolerance: float
    dim_intersection: int
    basis: Float[Array, "D k"]
    worst_direction: Float[Array, " D"]
    num_params: int
    rank_jacobian: int
    generic: bool
    generic_rank_jacobian: int
    gap: float
    min_gap: float
    probes: int | None
    lie: LieTrace | None
    reason: str
    seconds: float


@eqx.filter_jit
def _grams(
    f: FlatLifting,
    x: Float[Array, " D"],
    V: Float[Array, "D k"],
    G: Float[Array, "d p"] | None,
) -> tuple[Float[Array, "k k"], Float[Array, "k k"]]:
    r"""Gram matrices over the columns $v$ of `V`, summed over probes $g$: the basis vectors of
    $\mathbb{R}^d$ (`G=None`, exact) or the columns of `G`:

    $K_M = \sum_g A_g A_g^\top$, $A_g = [\partial M[v_k] g]_k$, and
    $K_J = \sum_g W_g W_g^\top$, $W_g = [\partial^2 f[v_k, \cdot]^\top g]_k$,

    from one JVP along $v$ of $y \mapsto (w(y), \partial f(y) w(y))$, $w(y) = \partial f(y)^\top g$
    (so $\partial f\,w = M g$): no $d \times d$ matrix and no third-order tensor is formed."""
    k = V.shape[1]
    if G is None:
        G = jnp.eye(jax.eval_shape(f, x).shape[0], dtype=x.dtype)

    def per_probe(carry, g):
        def w_and_mg(y):
            w = jax.vjp(f, y)[1](g)[0]
            return w, jax.jvp(f, (y,), (w,))[1]

        def along(v):
            return jax.jvp(w_and_mg, (x,), (v,))[1]

        dW, dMg = jax.vmap(along, in_axes=1)(V)
        KM, KJ = carry
        return (KM + dMg @ dMg.T, KJ + dW @ dW.T), None

    zeros = jnp.zeros((k, k), dtype=x.dtype)
    (KM, KJ), _ = jax.lax.scan(per_probe, (zeros, zeros), G.T)
    return KM, KJ


def _row_space(A: np.ndarray, rtol: float) -> tuple[np.ndarray, float]:
    """An orthonormal basis (columns) of the row space of `A`, with its rank gap."""
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    smax = float(s[0]) if s.size else 0.0
    if smax == 0.0:
        return np.zeros((A.shape[1], 0)), math.inf
    rank, gap, _, _ = cut(s, rtol * smax)
    return Vt[:rank].T, gap


def _verdict(residual, tolerance, gap, min_gap, converged, max_depth, rank_J, rank_nearby):
    """`(holds, reason)`: undecided on an ambiguous rank, a growing trace, or a success at a
    non-generic point; else fails or holds by the residual."""
    if gap < min_gap:
        holds = None
        reason = (
            f"undecided: a rank decision has singular-value gap {gap:.3g} < min_gap "
            f"{min_gap:.3g}; the intersection dimension is not reliable at this point"
        )
    elif residual > tolerance:
        holds = False
        reason = f"fails: residual {residual:.3g} > tolerance {tolerance:.3g}"
        if rank_nearby > rank_J:
            reason += (
                f" (at a non-generic point: rank ∂φ = {rank_J} < {rank_nearby} nearby; a "
                "direction of the fibre inside the leaf moves M here)"
            )
    elif rank_nearby > rank_J:
        holds = None
        reason = (
            f"undecided: θ is a non-generic point (rank ∂φ(θ) = {rank_J}, {rank_nearby} at a "
            f"small random perturbation, e.g. θ = 0); the residual {residual:.3g} here says "
            "nothing about nearby generic points: check at a generic point"
        )
    elif not converged:
        holds = None
        reason = (
            f"undecided: residual {residual:.3g} is small but the Lie trace was still growing "
            f"at max_depth={max_depth}, so the intersection may be larger"
        )
    else:
        holds = True
        reason = f"holds: residual {residual:.3g} <= tolerance {tolerance:.3g}"
    return holds, reason


def _intersection_with_conserved(problem, J, norm_J, conserved, tolerance, rtol, name):
    """An orthonormal basis V of ker ∂φ ∩ ker ∂h for known conserved quantities h (checked
    to be conserved first), the rank of ∂φ and the smallest singular gap of the decisions."""
    h, _ = problem.flat(conserved, name, "conserved")
    Jh = np.asarray(jacobian(h, problem.x), dtype=float)
    norms = np.linalg.norm(Jh, axis=1)
    drift = np.linalg.norm(Jh @ J.T, axis=1) / np.maximum(norm_J * norms, np.finfo(float).tiny)
    if drift.size and float(drift.max()) > tolerance:
        i = int(drift.argmax())
        raise ValueError(
            f"{name}: `conserved` quantity {i} is not conserved at θ: "
            f"||∂φ ∇h_{i}|| / (||∂φ|| ||∇h_{i}||) = {float(drift.max()):.3g} > "
            f"tolerance {tolerance:.3g}."
        )
    Q1, gap_J = _row_space(J, rtol)
    Qh, gap_h = _row_space(Jh, rtol)
    U, s, _ = np.linalg.svd(np.concatenate([Q1, Qh], axis=1), full_matrices=True)
    rank, gap_S, _, _ = cut(s, rtol)
    return U[:, rank:], Q1.shape[1], min(gap_J, gap_h, gap_S)


def _inclusion_residual(problem, V, norm_J, probes, key):
    """(residual, worst direction, probes used) of ∂M on the columns of V (see `residual`
    in `KernelInclusion`): exact with every basis vector of R^d while d·k ≤ the budget."""
    D, d, k = problem.num_params, problem.num_outputs, V.shape[1]
    if not k:
        return 0.0, np.zeros(D), None
    dtype, G, used_probes = problem.x.dtype, None, None
    if probes is not None or d * k > _EXACT_BUDGET:
        used_probes = _DEFAULT_PROBES if probes is None else probes
        # Gaussian probes scaled by 1/√p: E[G G^T] = I, unbiased squared Frobenius norms
        G = numpy_rng(key, 1).standard_normal((d, used_probes)) / np.sqrt(used_probes)
        G = jax.device_put(G.astype(dtype))
    KM, KJ = _grams(problem.f, problem.x, jax.device_put(V.astype(dtype)), G)
    eval_M, evec_M = np.linalg.eigh(np.asarray(KM, dtype=float))
    top_J = float(np.linalg.eigvalsh(np.asarray(KJ, dtype=float))[-1])
    numerator = math.sqrt(max(float(eval_M[-1]), 0.0))
    denominator = 2.0 * norm_J * math.sqrt(max(top_J, 0.0))
    residual = numerator / denominator if denominator > 0 else 0.0
    return residual, V @ evec_M[:, -1], used_probes


def kernel_inclusion(
    phi: Callable | None,
    theta: PyTree,
    conserved: Callable | None = None,
    *,
    tolerance: float | None = None,
    probes: int | None = None,
    max_depth: int = 5,
    rtol: float | None = None,
    min_gap: float | None = None,
    batch_size: int = 64,
    key: PRNGKeyArray | None = None,
) -> KernelInclusion:
    r"""Check the kernel-inclusion criterion at θ (THEORY §1),

    $$\ker\partial\varphi(\theta) \cap \ker\partial h(\theta) \subseteq \ker\partial M(\theta),
    \qquad M(\theta) = \partial\varphi(\theta)\,\partial\varphi(\theta)^\top,$$

    a necessary condition for the intrinsic metric property: moving along the fibre of φ inside
    the conserved leaf must not change $M$.

    The intersection is found by SVD: with `conserved=None`, $\ker\partial h(\theta)$ is the Lie
    trace (exact for a complete set of laws) and the intersection is the part of
    [`node_flow.criterion.lie_trace`][]'s basis orthogonal to the rows of
    $\partial\varphi(\theta)$; with `conserved` (θ ↦ array of conserved quantities), it is the
    orthogonal complement of the rows of $\partial\varphi(\theta)$ and $\partial h(\theta)$.
    $\partial M(\theta)[v]$ is applied to probe vectors by one nested JVP (see `residual` in
    [`node_flow.criterion.KernelInclusion`][]).

    **Arguments:**

    - `phi`, `theta`: as [`node_flow.criterion.lie_trace`][].
    - `conserved`: optional known conserved quantities; they are checked to be conserved
      ($\|\partial\varphi\,\nabla h_i\| \le$ `tolerance` $\|\partial\varphi\|_2\|\nabla h_i\|$).
    - `tolerance`: threshold on the relative residual. Default $100\sqrt{\varepsilon}$
      (≈ 1.5e-6 in float64), see `node_flow/criterion/_rank.py`.
    - `probes`: `None` (default) probes $\partial M[v]$ with every basis vector of
      $\mathbb{R}^d$ (exact) while $d \cdot \dim \le 2^{15}$, else with 32 Gaussian vectors;
      an integer forces that many Gaussian probes.
    - `max_depth`, `rtol`, `min_gap`, `batch_size`: as [`node_flow.criterion.lie_trace`][].
    - `key`: a `jax.random` key for the bracket combinations and probes (default: a fixed seed).

    **Returns:** a [`node_flow.criterion.KernelInclusion`][].
    """
    name = "kernel_inclusion"
    start = time.perf_counter()
    _check_options(name, max_depth, batch_size)
    if probes is not None and probes < 1:
        raise ValueError(f"{name}: probes must be a positive integer or None; got {probes}.")
    problem = make_problem(phi, theta, name)
    check_size(problem, name)
    dtype = problem.x.dtype
    rtol = default_rtol(dtype) if rtol is None else rtol
    min_gap = default_min_gap(dtype) if min_gap is None else min_gap
    tolerance = default_tolerance(dtype) if tolerance is None else tolerance
    D = problem.num_params
    J = np.asarray(jacobian(problem.f, problem.x), dtype=float)
    norm_J = float(np.linalg.norm(J, 2)) if J.size else 0.0
    if conserved is None:
        lie = trace_problem(
            problem, J, max_depth=max_depth, rtol=rtol, min_gap=min_gap,
            batch_size=batch_size, key=key,
        )  # fmt: skip
        rank_J = lie.rank_jacobian
        V = np.asarray(lie.basis, dtype=float)[:, rank_J:]
        gap = float(np.min(np.asarray(lie.gaps)))
        converged, rank_nearby = lie.converged, lie.generic_rank_jacobian
    else:
        lie, converged = None, True
        V, rank_J, gap = _intersection_with_conserved(
            problem, J, norm_J, conserved, tolerance, rtol, name
        )
        rank_nearby = generic_rank(problem, rank_J, rtol, key)
    k = V.shape[1]
    residual, worst, used_probes = _inclusion_residual(problem, V, norm_J, probes, key)
    holds, reason = _verdict(
        residual, tolerance, gap, min_gap, converged, max_depth, rank_J, rank_nearby
    )
    return KernelInclusion(
        holds=holds,
        residual=float(residual),
        tolerance=float(tolerance),
        dim_intersection=int(k),
        basis=jax.device_put(V.astype(dtype)),
        worst_direction=jax.device_put(worst.astype(dtype)),
        num_params=D,
        rank_jacobian=int(rank_J),
        generic=rank_nearby == rank_J,
        generic_rank_jacobian=int(rank_nearby),
        gap=float(gap),
        min_gap=float(min_gap),
        probes=used_probes,
        lie=lie,
        reason=reason,
        seconds=time.perf_counter() - start,
    )
