"""Multilayer perceptrons with ReLU activations, as layered DAGs."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._architecture import Architecture, mlp_architecture
from ._network import AbstractReLUNetwork


def _as_matrices(name, values, ndim):
    if isinstance(values, (jnp.ndarray, np.ndarray)):
        raise TypeError(f"MLP: `{name}` must be a tuple of arrays, one per layer; got one array.")
    try:
        arrays = tuple(jnp.asarray(v) for v in values)
    except TypeError as err:
        raise TypeError(f"MLP: `{name}` must be a tuple of arrays, one per layer.") from err
    for j, a in enumerate(arrays, start=1):
        if a.ndim != ndim:
            kind = "a matrix" if ndim == 2 else "a vector"
            raise ValueError(
                f"MLP: {name}[{j - 1}] (layer {j}) must be {kind}; got shape {a.shape}."
            )
    return arrays


class MLP(AbstractReLUNetwork):
    r"""A ReLU multilayer perceptron
    $f(x) = U_L\,\sigma(\cdots \sigma(U_1 x + b_1) \cdots) + b_L$, $\sigma = \max(\cdot, 0)$.

    The weights follow [`node_flow.LinearNetwork`][]: $U_j \in \mathbb{R}^{n_j \times n_{j-1}}$,
    input layer first. A bias $b_j \in \mathbb{R}^{n_j}$ is a set of edges from a constant-1
    input neuron of layer $j$ (so paths may start at a bias). The static architecture,
    the edge order and the path order are those of [`node_flow.relu.mlp_architecture`][]:
    `edge_weights()` is `concat(U_1.ravel(), b_1, U_2.ravel(), b_2, …)`.

    **Arguments:**

    - `weights`: a sequence of matrices `U_1, …, U_L` with matching widths.
    - `biases`: `None` (no biases) or a sequence of vectors `b_1, …, b_L`.
    """

    weights: tuple[Float[Array, "_ _"], ...]
    biases: tuple[Float[Array, " _"], ...] | None
    arch: Architecture = eqx.field(static=True)

    def __init__(self, weights, biases=None):
        weights = _as_matrices("weights", weights, 2)
        if len(weights) == 0:
            raise ValueError("MLP: `weights` is empty; give at least one matrix U_1.")
        for j in range(1, len(weights)):
            rows, cols = weights[j - 1].shape[0], weights[j].shape[1]
            if rows != cols:
                raise ValueError(
                    f"MLP: mismatched shapes: U_{j} has {rows} rows but U_{j + 1} has {cols} "
                    f"columns; U_j must be n_j × n_(j-1)."
                )
        widths = (weights[0].shape[1],) + tuple(U.shape[0] for U in weights)
        if biases is not None:
            biases = _as_matrices("biases", biases, 1)
            if len(biases) != len(weights):
                raise ValueError(
                    f"MLP: got {len(biases)} bias vectors for {len(weights)} layers; give one "
                    "per layer (b_1, …, b_L)."
                )
            for j, (b, n) in enumerate(zip(biases, widths[1:]), start=1):
                if b.shape != (n,):
                    raise ValueError(
                        f"MLP: mismatched shapes: b_{j} has shape {b.shape} but layer {j} has "
                        f"{n} neurons."
                    )
        self.weights = weights
        self.biases = biases
        self.arch = mlp_architecture(widths, bias=biases is not None)

    def __check_init__(self):
        leaves = self.weights + (() if self.biases is None else self.biases)
        dtypes = {a.dtype for a in leaves}
        if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
            raise TypeError(f"MLP: weights and biases must share one floating dtype; got {dtypes}.")

    @property
    def depth(self) -> int:
        """$L$, the number of weight matrices."""
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """$(n_0, n_1, \\dots, n_L)$."""
        return (self.weights[0].shape[1],) + tuple(U.shape[0] for U in self.weights)

    def edge_weights(self) -> Float[Array, " edges"]:
        parts = []
        for j, U in enumerate(self.weights):
            parts.append(U.ravel())
            if self.biases is not None:
                parts.append(self.biases[j])
        return jnp.concatenate(parts)

    def with_edge_weights(self, theta: Float[ArrayLike, " edges"]) -> "MLP":
        theta = jnp.asarray(theta)
        if theta.shape != (self.arch.num_edges,):
            raise ValueError(
                f"MLP.with_edge_weights: expected {self.arch.num_edges} weights; got shape "
                f"{theta.shape}."
            )
        weights, biases, start = [], [], 0
        for U in self.weights:
            weights.append(theta[start : start + U.size].reshape(U.shape))
            start += U.size
            if self.biases is not None:
                biases.append(theta[start : start + U.shape[0]])
                start += U.shape[0]
        return MLP(weights, None if self.biases is None else biases)

    def _forward(self, x, gates=None):
        x = jnp.asarray(x, dtype=self.weights[0].dtype)
        if x.shape != (self.widths[0],):
            raise ValueError(f"MLP: expected an input of shape ({self.widths[0]},); got {x.shape}.")
        pre, h, start = [], x, 0
        # A loop over layers of different widths: unrolled once at trace time.
        for j, U in enumerate(self.weights):
            a = U @ h if self.biases is None else U @ h + self.biases[j]
            pre.append(a)
            if gates is None:
                h = jnp.maximum(a, 0)
            elif j + 1 < len(self.weights):
                h = gates[start : start + a.shape[0]] * a
                start += a.shape[0]
        return pre

    def gated(self, x, gates):
        pre = self._forward(x, jnp.asarray(gates, dtype=self.weights[0].dtype))
        hidden = jnp.concatenate(pre[:-1]) if len(pre) > 1 else pre[-1][:0]
        return pre[-1], hidden

    def __call__(self, x: Float[ArrayLike, " inputs"]) -> Float[Array, " outputs"]:
        r"""$f(x)$ by the layer-by-layer forward pass."""
        return self._forward(x)[-1]

    def pre_activations(self, x: Float[ArrayLike, " inputs"]) -> Float[Array, " hidden"]:
        r"""$U_j \sigma(\cdots) + b_j$ for the hidden layers $j = 1, \dots, L-1$, concatenated."""
        pre = self._forward(x)[:-1]
        if not pre:
            return jnp.zeros((0,), dtype=self.weights[0].dtype)
        return jnp.concatenate(pre)
