r"""Path-liftings: rank-one factorizations and ReLU MLPs (THEORY §4)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ...relu import conservation_laws as relu_conservation_laws, MLP


class RankOne(eqx.Module):
    r"""$\varphi(u, v) = (u_j v_j^\top)_{j=1}^{r}$, $u_j \in \mathbb{R}^n$, $v_j \in \mathbb{R}^m$.

    θ is `(u, v)` with `u` of shape `(r, n)` and `v` of shape `(r, m)`; z has shape `(r, n, m)`.
    This is the path-lifting of a two-layer ReLU network on a fixed activation region.
    Conserved: $\|u_j\|^2 - \|v_j\|^2$, one per unit.
    """

    r: int = eqx.field(static=True)
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)

    def __call__(
        self, theta: tuple[Float[Array, "r n"], Float[Array, "r m"]]
    ) -> Float[Array, "r n m"]:
        u, v = theta
        return u[:, :, None] * v[:, None, :]

    def conserved(
        self, theta: tuple[Float[Array, "r n"], Float[Array, "r m"]]
    ) -> Float[Array, " r"]:
        u, v = theta
        return jnp.sum(u**2, axis=1) - jnp.sum(v**2, axis=1)

    def sample(self, key: PRNGKeyArray) -> tuple[Float[Array, "r n"], Float[Array, "r m"]]:
        ku, kv = jr.split(key)
        return jr.normal(ku, (self.r, self.n)), jr.normal(kv, (self.r, self.m))


def rank_one(r: int, n: int, m: int) -> RankOne:
    r"""The lifting $(u_j v_j^\top)_{j \le r}$ of `r` rank-one factors of size $n \times m$."""
    if min(r, n, m) < 1:
        raise ValueError(f"rank_one: r, n, m must be >= 1; got {r}, {n}, {m}.")
    return RankOne(int(r), int(n), int(m))


class ReLUPaths(eqx.Module):
    r"""The path-lifting of a ReLU MLP with widths $(n_0, \dots, n_L)$:
    $z_p = \prod_{e \in p} \theta_e$ over every path $p$ from an input, or from a bias (an edge
    from a constant-1 neuron), to an output.

    θ is the tuple of weights $W_j \in \mathbb{R}^{n_j \times n_{j-1}}$, or with `bias=True`
    the pair `(weights, biases)` with $b_j \in \mathbb{R}^{n_j}$: the network
    [`node_flow.relu.MLP`][] (`model(θ)`), whose `lift()` and
    [`node_flow.relu.conservation_laws`][] give $z$ (paths in the order of
    [`node_flow.relu.mlp_architecture`][]) and the laws: for each hidden neuron $v$,
    $h_v = \sum_{e \to v} \theta_e^2 - \sum_{v \to e} \theta_e^2$.
    """

    widths: tuple[int, ...] = eqx.field(static=True)
    bias: bool = eqx.field(static=True)

    def model(self, theta: PyTree[Float[Array, "..."]]) -> MLP:
        """The ReLU network with these weights (and biases)."""
        if self.bias:
            return MLP(tuple(theta[0]), tuple(theta[1]))
        return MLP(tuple(theta))

    def __call__(self, theta: PyTree[Float[Array, "..."]]) -> Float[Array, " paths"]:
        return self.model(theta).lift()

    def conserved(self, theta: PyTree[Float[Array, "..."]]) -> Float[Array, " hidden"]:
        return relu_conservation_laws(self.model(theta))

    def sample(self, key: PRNGKeyArray) -> PyTree[Float[Array, "..."]]:
        keys = jr.split(key, 2 * (len(self.widths) - 1))
        pairs = zip(self.widths[:-1], self.widths[1:])
        weights = tuple(jr.normal(k, (o, i)) for k, (i, o) in zip(keys[::2], pairs))
        if not self.bias:
            return weights
        biases = tuple(jr.normal(k, (o,)) for k, o in zip(keys[1::2], self.widths[1:]))
        return weights, biases


def relu_paths(widths: tuple[int, ...] | list[int], *, bias: bool = False) -> ReLUPaths:
    r"""The ReLU path-lifting for widths $(n_0, \dots, n_L)$, with or without biases."""
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"relu_paths: widths must be (n_0, ..., n_L), L >= 1; got {widths}.")
    return ReLUPaths(widths, bool(bias))
