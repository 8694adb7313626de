r"""A lifting $\varphi$ and a point $\theta$, flattened to $x \in \mathbb{R}^D$, validated once.

Every routine of `node_flow.criterion` works on the flat vector
$x = \operatorname{ravel}(\theta) \in \mathbb{R}^D$ and the flat map
$f(x) = \operatorname{ravel}(\varphi(\operatorname{unravel}(x))) \in \mathbb{R}^d$, with the
Euclidean metric on $x$. This file turns the user's `(phi, theta)` into that pair, with a clear
`TypeError`/`ValueError` for input that would otherwise give a silent wrong answer.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._checks import check_array_output


class _ModuleLift(eqx.Module):
    """`params ↦ eqx.combine(params, static).lift()`: the lifting of an `eqx.Module` model."""

    static: Any

    def __call__(self, params: PyTree) -> Any:
        return eqx.combine(params, self.static).lift()


class _ModuleCall(eqx.Module):
    """`params ↦ fn(eqx.combine(params, static))`: a user function of an `eqx.Module` model."""

    fn: Callable
    static: Any

    def __call__(self, params: PyTree) -> Any:
        return self.fn(eqx.combine(params, self.static))


class FlatLifting(eqx.Module):
    r"""The flat map $f(x) = \operatorname{ravel}(\varphi(\operatorname{unravel}(x)))$.

    Hashable by the identity of `phi` and the (static) structure of $\theta$, so that
    `eqx.filter_jit` reuses compiled code across calls on the same lifting and shapes.
    """

    phi: Callable
    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def unravel(self, x: Float[Array, " D"]) -> PyTree:
        leaves, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape, dtype=int))
            leaves.append(x[start : start + size].reshape(shape))
            start += size
        return jax.tree.unflatten(self.treedef, leaves)

    def __call__(self, x: Float[Array, " D"]) -> Float[Array, " d"]:
        return jnp.ravel(self.phi(self.unravel(x)))


def _check_leaves(theta: PyTree, name: str) -> list:
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(theta)
    if not leaves_with_path:
        raise ValueError(f"{name}: θ has no array leaves (D = 0); nothing to check.")
    arrays, dtypes = [], set()
    for path, leaf in leaves_with_path:
        where = jax.tree_util.keystr(path) or "<root>"
        if isinstance(leaf, (bool, int, np.integer, np.bool_)) or (
            hasattr(leaf, "dtype") and not jnp.issubdtype(leaf.dtype, jnp.floating)
        ):
            dtype = getattr(leaf, "dtype", type(leaf).__name__)
            raise TypeError(
                f"{name}: θ leaf {where} has dtype {dtype}; the criterion differentiates "
                "with respect to every leaf, so all leaves must be real floating arrays "
                "(convert with jnp.asarray(x, dtype=float), or close over integer data in phi)."
            )
        if not isinstance(leaf, (jax.Array, np.ndarray, float)):
            raise TypeError(
                f"{name}: θ leaf {where} is a {type(leaf).__name__}, not an array; "
                "θ must be a pytree of floating arrays."
            )
        leaf = leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
        dtypes.add(leaf.dtype)
        arrays.append(leaf)
    if len(dtypes) > 1:
        raise TypeError(
            f"{name}: θ mixes floating dtypes {sorted(map(str, dtypes))}; cast all leaves to "
            "one dtype (float64 recommended) so rank decisions use one precision."
        )
    for path_leaf, a in zip(leaves_with_path, arrays):
        if not np.all(np.isfinite(np.asarray(a))):
            where = jax.tree_util.keystr(path_leaf[0]) or "<root>"
            raise ValueError(f"{name}: θ leaf {where} holds NaN or inf.")
    return arrays


def _check_output(fn: Callable, theta: PyTree, name: str, what: str) -> int:
    out = check_array_output(name, what, fn, theta)
    size = int(np.prod(out.shape, dtype=int))
    if size == 0:
        raise ValueError(f"{name}: `{what}` returned an empty array (shape {out.shape}).")
    return size


class Problem(eqx.Module):
    """A validated `(f, x)` pair with its sizes."""

    f: FlatLifting
    x: Float[Array, " D"]
    num_params: int = eqx.field(static=True)
    num_outputs: int = eqx.field(static=True)
    theta: PyTree = None
    static: Any = None

    def flat(self, fn: Callable, name: str, what: str) -> tuple[FlatLifting, int]:
        """Flatten another function of θ (e.g. the conserved quantities) the same way."""
        if not callable(fn):
            raise TypeError(f"{name}: `{what}` must be callable; got {type(fn).__name__}.")
        if self.static is not None:
            fn = _ModuleCall(fn, self.static)
        g = FlatLifting(fn, self.f.treedef, self.f.shapes)
        return g, _check_output(fn, self.theta, name, what)


def make_problem(phi: Callable | None, theta: PyTree, name: str) -> Problem:
    r"""Validate `(phi, theta)` and flatten them.

    `phi=None` takes θ to be an `eqx.Module` with a `.lift()` method (every node_flow model):
    its inexact-array leaves are the parameters and $\varphi$ is the lift of the recombined
    module.
    """
    static = None
    if phi is None:
        if not (isinstance(theta, eqx.Module) and callable(getattr(type(theta), "lift", None))):
            raise TypeError(
                f"{name}: with phi=None, θ must be an eqx.Module with a .lift() method; "
                f"got {type(theta).__name__}."
            )
        params, static = eqx.partition(theta, eqx.is_inexact_array)
        phi, theta = _ModuleLift(static), params
    elif not callable(phi):
        raise TypeError(f"{name}: phi must be callable (θ ↦ array); got {type(phi).__name__}.")
    arrays = _check_leaves(theta, name)
    treedef = jax.tree.structure(theta)
    theta = jax.tree.unflatten(treedef, arrays)
    num_outputs = _check_output(phi, theta, name, "phi")
    shapes = tuple(tuple(a.shape) for a in arrays)
    x = jax.device_put(np.concatenate([np.ravel(np.asarray(a)) for a in arrays]))
    f = FlatLifting(phi, treedef, shapes)
    return Problem(f, x, int(x.shape[0]), num_outputs, theta, static)


def numpy_rng(key: Any, stream: int) -> np.random.Generator:
    """A numpy generator seeded by a `jax.random` key (`None`: seed 0) and a stream number:
    random coefficients are drawn on the host (no compiled threefry kernel per shape), yet
    reproducibly from the user's key."""
    seed = [0] if key is None else np.asarray(jax.random.key_data(key)).ravel().tolist()
    return np.random.default_rng([*seed, stream])


@eqx.filter_jit
def jacobian(f: FlatLifting, x: Float[Array, " D"]) -> Float[Array, "d D"]:
    r"""The Jacobian $\partial f(x) \in \mathbb{R}^{d \times D}$ (reverse mode when $d \le D$)."""
    d = jax.eval_shape(f, x).shape[0]
    if d <= x.shape[0]:
        return jax.jacrev(f)(x)
    return jax.jacfwd(f)(x)


MAX_DENSE_ENTRIES = 2**25
r"""The criterion forms the dense Jacobian $\partial\varphi(\theta)$ ($d \times D$) and a basis of
the Lie trace (up to $D \times D$) and takes their SVDs ($O(dD\min(d, D))$ flops). Above
$2^{25}$ entries (268 MB in float64; SVDs of minutes on a laptop) it refuses instead of ending
in a `MemoryError` or a run of hours."""

_PERTURBATION = 1e-3
"""Relative size of the generic perturbation used to detect a non-generic point: large enough
that a rank which is generically present clears the rank threshold √ε by orders of magnitude,
small enough to stay near θ."""


def check_size(problem: Problem, name: str) -> None:
    """Refuse, with the memory figure and alternatives, a problem too large to form densely."""
    D, d = problem.num_params, problem.num_outputs
    entries = d * D + D * D
    if entries > MAX_DENSE_ENTRIES:
        itemsize = np.dtype(problem.x.dtype).itemsize
        raise ValueError(
            f"{name}: θ has D = {D} parameters and φ has d = {d} outputs: the dense Jacobian "
            f"(d × D) and the Lie-trace basis (up to D × D) need about "
            f"{entries * itemsize / 1e9:.3g} GB and SVDs of O(d·D·min(d, D)) = "
            f"{float(d) * D * min(d, D):.2g} flops, above the limit of {MAX_DENSE_ENTRIES} "
            f"entries ({MAX_DENSE_ENTRIES * itemsize / 1e6:.0f} MB). Check the same structure "
            "at small widths (e.g. liftings.deep_linear((4, 4, 4)): the counts and verdicts of "
            "THEORY §2 do not depend on the size of the widths beyond their order), or use the "
            "structured count of the known laws (deep linear: Σ_j n_j(n_j + 1)/2 generically, "
            "the entries of C_j = U_{j+1}ᵀU_{j+1} − U_j U_jᵀ)."
        )


def generic_rank(problem: Problem, rank: int, rtol: float, key: Any) -> int:
    r"""The rank of $\partial\varphi$ at a nearby generic point $\theta + \delta\xi$,
    $\xi \sim \mathcal{N}(0, I)$, $\delta = 10^{-3} \max(\|\theta\|/\sqrt{D}, 1)$ (not below
    `rank`). It exceeds the rank at θ exactly when θ is a non-generic point, where the counts
    and verdicts of the criterion differ from those at every nearby generic point (e.g. θ = 0)."""
    x = np.asarray(problem.x, dtype=float)
    scale = max(float(np.linalg.norm(x)) / np.sqrt(x.size), 1.0)
    xi = numpy_rng(key, 2).standard_normal(x.size)
    y = jax.device_put((x + _PERTURBATION * scale * xi).astype(problem.x.dtype))
    s = np.linalg.svd(np.asarray(jacobian(problem.f, y), dtype=float), compute_uv=False)
    smax = float(s[0]) if s.size else 0.0
    return max(rank, int(np.sum(s > rtol * smax)) if smax > 0 else 0)
