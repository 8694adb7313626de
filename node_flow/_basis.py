r"""Bases of grid functions on $[0, 1]$: how a [`node_flow.LinearNeuralODE`][] turns its
node values into a weight function $A(s)$, its $L^2$ metric, and its refinement.

A basis on $m$ uniform cells has nodes $s_i = i/m$, $i = 0..m$, and functions $\psi_i$ with
$A(s) = \sum_i A_i \psi_i(s)$. It supplies the interpolation, the mass (Gram) matrix
$\mathcal M_{ij} = \int_0^1 \psi_i \psi_j$ that turns Euclidean node gradients into $L^2$
gradients, the refinement to $2m$ cells that represents the same function exactly, and the
interior nodes where $A(s)$ may kink (jump times for the solver).
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class AbstractBasis(eqx.Module):
    r"""A basis of grid functions on $m$ uniform cells of $[0, 1]$ (nodes $s_i = i/m$).

    Subclasses give `name`, `interpolate`, `mass_matrix` and `refine`. `precondition`
    (the $L^2$ gradient $\mathcal M^{+} g$, with the pseudo-inverse so that a node without a
    basis function gets no update) and `jump_ts` are shared.
    """

    name: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def interpolate(self, A: Float[Array, "nodes n n"], s: Float[Array, ""]) -> Array:
        r"""$A(s) = \sum_i A_i\psi_i(s)$ for one $s \in [0, 1]$."""

    @abc.abstractmethod
    def mass_matrix(self, m: int) -> np.ndarray:
        r"""The $(m+1)\times(m+1)$ Gram matrix $\int_0^1 \psi_i\psi_j$ (NumPy, float64)."""

    @abc.abstractmethod
    def refine(self, A: Float[Array, "nodes n n"]) -> Float[Array, "fine_nodes n n"]:
        """Node values on `2 m` cells of the same function (new nodes at the midpoints)."""

    def precondition(self, g: Float[Array, "nodes n n"]) -> Float[Array, "nodes n n"]:
        r"""Euclidean node gradient $\mapsto$ $L^2$ gradient: $g \mapsto \mathcal M^{+} g$."""
        Minv = jnp.asarray(np.linalg.pinv(self.mass_matrix(g.shape[0] - 1)), g.dtype)
        return jnp.einsum("ij,jab->iab", Minv, g)

    def jump_ts(self, m: int, dtype) -> Float[Array, " interior"] | None:
        """The interior nodes, where $A(s)$ may kink (`None` for one cell)."""
        return jnp.linspace(0.0, 1.0, m + 1, dtype=dtype)[1:-1] if m > 1 else None


def _cell(A, s):
    m = A.shape[0] - 1
    x = s.astype(A.dtype) * m
    cell = jnp.clip(jnp.floor(x), 0, m - 1)
    return cell.astype(jnp.int32), x - cell


class PiecewiseLinear(AbstractBasis):
    r"""Hat functions: $A$ is linear on each cell $[s_i, s_{i+1}]$ and continuous. Second-order
    accurate ($O(h^2)$) for a smooth weight function. Mass matrix: tridiagonal
    $\frac h6 [1, 4, 1]$ with $\frac h3$ at the two ends."""

    name = "linear"

    def interpolate(self, A, s):
        i, w = _cell(A, s)
        return (1 - w) * A[i] + w * A[i + 1]

    def mass_matrix(self, m):
        h = 1.0 / m
        idx = np.arange(m)
        M = np.zeros((m + 1, m + 1))
        M[idx, idx] += h / 3
        M[idx + 1, idx + 1] += h / 3
        M[idx, idx + 1] += h / 6
        M[idx + 1, idx] += h / 6
        return M

    def refine(self, A):
        return _interleave(A, 0.5 * (A[:-1] + A[1:]))


class PiecewiseConstant(AbstractBasis):
    r"""Cell indicators: $A = A_i$ on $[s_i, s_{i+1})$, the left node's value (the last node
    does not enter and gets no update). First-order accurate. Mass matrix
    $\operatorname{diag}(h, \dots, h, 0)$."""

    name = "constant"

    def interpolate(self, A, s):
        i, _ = _cell(A, s)
        return A[i]

    def mass_matrix(self, m):
        return np.diag(np.concatenate([np.full(m, 1.0 / m), [0.0]]))

    def refine(self, A):
        return _interleave(A, A[:-1])


def _interleave(A, mid):
    """Nodes `A[0], mid[0], A[1], mid[1], …, A[m]`."""
    fine = jnp.stack([A[:-1], mid], axis=1).reshape((2 * (A.shape[0] - 1),) + A.shape[1:])
    return jnp.concatenate([fine, A[-1:]])


BASES = {basis.name: basis for basis in (PiecewiseLinear(), PiecewiseConstant())}


def as_basis(fname: str, interpolation) -> AbstractBasis:
    """A basis from its shorthand (`"linear"`, `"constant"`) or an `AbstractBasis` instance."""
    if isinstance(interpolation, AbstractBasis):
        return interpolation
    if isinstance(interpolation, str) and interpolation in BASES:
        return BASES[interpolation]
    raise ValueError(
        f"{fname}: `interpolation` must be one of {tuple(BASES)} or an "
        f"`AbstractBasis` instance (e.g. `PiecewiseLinear()`); got {interpolation!r}."
    )
