"""ReLU networks on a general DAG, given by their edges (skip connections allowed)."""

from collections.abc import Sequence
from typing import SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._architecture import Architecture
from ._network import AbstractReLUNetwork


class DAGNetwork(AbstractReLUNetwork):
    r"""A ReLU network on a directed acyclic graph, given by its edges and their weights.

    Neuron $v$ computes $a_v = \sum_{e = u \to v} \theta_e\, x_u$ with $x_u$ the input
    coordinate (data inputs), 1 (constant neurons), $\max(a_u, 0)$ (hidden neurons); the
    outputs are the $a_v$ of the output neurons. Skip connections are edges across layers.

    **Arguments:**

    - `edges`: a sequence of `(u, v)` pairs, or an [`node_flow.relu.Architecture`][].
    - `weights`: the edge weights $\theta_e$, in the order of `edges`.
    - `inputs`, `outputs`, `constants`: as in [`node_flow.relu.Architecture`][] (only when
      `edges` is not already an `Architecture`).
    """

    weights: Float[Array, " edges"]
    arch: Architecture = eqx.field(static=True)

    def __init__(
        self,
        edges: Architecture | Sequence[Sequence[SupportsIndex]],
        weights: Float[ArrayLike, " _"],
        *,
        inputs: Sequence[SupportsIndex] | None = None,
        outputs: Sequence[SupportsIndex] | None = None,
        constants: Sequence[SupportsIndex] = (),
    ):
        if isinstance(edges, Architecture):
            if inputs is not None or outputs is not None or tuple(constants):
                raise ValueError(
                    "DAGNetwork: give `inputs`/`outputs`/`constants` only with an edge list, "
                    "not with an Architecture."
                )
            arch = edges
        else:
            arch = Architecture(edges, inputs, outputs, constants)
        weights = jnp.asarray(weights)
        if weights.shape != (arch.num_edges,):
            raise ValueError(
                f"DAGNetwork: mismatched shapes: {arch.num_edges} edges but `weights` has shape "
                f"{weights.shape}; give one weight per edge."
            )
        self.weights = weights
        self.arch = arch

    def __check_init__(self):
        if not jnp.issubdtype(self.weights.dtype, jnp.floating):
            raise TypeError(f"DAGNetwork: weights must be floating; got {self.weights.dtype}.")

    def edge_weights(self) -> Float[Array, " edges"]:
        return self.weights

    def with_edge_weights(self, theta: Float[ArrayLike, " edges"]) -> "DAGNetwork":
        return DAGNetwork(self.arch, theta)

    def _propagate(self, x, gates=None):
        arch = self.arch
        x = jnp.asarray(x, dtype=self.weights.dtype)
        if x.shape != (len(arch.inputs),):
            raise ValueError(
                f"DAGNetwork: expected an input of shape ({len(arch.inputs)},); got {x.shape}."
            )
        n = arch.num_neurons
        src, dst = np.asarray(arch.edges).T
        W = jnp.zeros((n, n), dtype=self.weights.dtype).at[dst, src].set(self.weights)
        base = jnp.zeros((n,), dtype=x.dtype).at[np.asarray(arch.inputs, dtype=np.int64)].set(x)
        base = base.at[np.asarray(arch.constants, dtype=np.int64)].set(1.0)
        is_source = np.zeros(n, dtype=bool)
        is_source[list(arch.inputs + arch.constants)] = True
        is_hidden = np.zeros(n, dtype=bool)
        is_hidden[list(arch.hidden)] = True
        hidden = np.asarray(arch.hidden, dtype=np.int64)
        if gates is None:
            act = lambda pre: jnp.maximum(pre, 0)
        else:
            full = jnp.zeros((n,), dtype=x.dtype).at[hidden].set(gates)
            act = lambda pre: full * pre

        # After k sweeps every neuron at distance <= k from the sources is exact, so
        # `depth` sweeps (a fixed, static count) evaluate the whole DAG.
        def sweep(_, post):
            pre = W @ post
            return jnp.where(is_source, base, jnp.where(is_hidden, act(pre), pre))

        post = jax.lax.fori_loop(0, arch.depth, sweep, base)
        return W @ post

    def __call__(self, x: Float[ArrayLike, " inputs"]) -> Float[Array, " outputs"]:
        r"""The forward pass (topological sweeps of the weighted adjacency matrix)."""
        return self._propagate(x)[np.asarray(self.arch.outputs)]

    def pre_activations(self, x: Float[ArrayLike, " inputs"]) -> Float[Array, " hidden"]:
        return self._propagate(x)[np.asarray(self.arch.hidden, dtype=np.int64)]

    def gated(self, x, gates):
        a = self._propagate(x, jnp.asarray(gates, dtype=self.weights.dtype))
        arch = self.arch
        return a[np.asarray(arch.outputs)], a[np.asarray(arch.hidden, dtype=np.int64)]
