"""The abstract ReLU network on a DAG, and what every such network exposes."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._lifting import AbstractLifting
from ._architecture import Architecture
from ._lifting import path_metric, path_products, squared_weight_laws


class AbstractReLUNetwork(AbstractLifting):
    r"""A ReLU network on a DAG with weights $\theta_e$ on its edges and lifting the
    path-lifting $z_p = \prod_{e \in p} \theta_e$ (THEORY §4).

    Final subclasses ([`node_flow.relu.MLP`][], [`node_flow.relu.DAGNetwork`][]) hold the
    weights and the static [`node_flow.relu.Architecture`][] `arch`, and implement their own
    forward pass, `edge_weights` and `with_edge_weights`.
    """

    arch: eqx.AbstractVar[Architecture]

    @abc.abstractmethod
    def edge_weights(self) -> Float[Array, " edges"]:
        """The weights $\\theta_e$ in the order of `arch.edges`."""

    @abc.abstractmethod
    def with_edge_weights(self, theta: Float[ArrayLike, " edges"]) -> "AbstractReLUNetwork":
        """The same architecture with the edge weights `theta` (in the order of `arch.edges`)."""

    @abc.abstractmethod
    def __call__(self, x: Float[ArrayLike, " inputs"]) -> Float[Array, " outputs"]:
        """The network's forward pass on one input."""

    @abc.abstractmethod
    def pre_activations(self, x: Float[ArrayLike, " inputs"]) -> Float[Array, " hidden"]:
        """The pre-activations of the hidden neurons (order of `arch.hidden`) on one input."""

    @abc.abstractmethod
    def gated(
        self, x: Float[ArrayLike, " inputs"], gates: Float[ArrayLike, " hidden"]
    ) -> tuple[Float[Array, " outputs"], Float[Array, " hidden"]]:
        r"""The forward pass with each ReLU replaced by a fixed gate, $\sigma(a_v) \to g_v a_v$:
        returns the outputs and the hidden pre-activations on one input.

        With `gates` the activation pattern ($g_v = [a_v > 0]$) this is the network itself;
        a gate in $(0, 1)$ on a neuron with $a_v = 0$ is the one-sided derivative mix of a
        sliding (Filippov) solution (see [`node_flow.relu.train`][]).
        """

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """The edge list `(u, v)`, in the order of `edge_weights()`."""
        return self.arch.edges

    def lift(self) -> Float[Array, " paths"]:
        r"""The path-lifting $z_p = \prod_{e \in p} \theta_e$, one entry per path, in the order
        of `arch.paths` (see [`node_flow.relu.Architecture`][])."""
        return path_products(self.edge_weights(), self.arch)

    def activation_pattern(
        self, X: Float[ArrayLike, "samples inputs"]
    ) -> Bool[Array, "samples hidden"]:
        r"""The activation pattern on a dataset: `pattern[i, v]` is whether hidden neuron
        `arch.hidden[v]` has a positive pre-activation on `X[i]` (ReLU'(0) = 0)."""
        return jax.vmap(self.pre_activations)(jnp.asarray(X)) > 0


def conservation_laws(net: AbstractReLUNetwork) -> Float[Array, " hidden"]:
    r"""The conservation laws of a ReLU network, one per hidden neuron $v$ (THEORY §4):

    $$h_v(\theta) = \sum_{e \text{ into } v} \theta_e^2 - \sum_{e \text{ out of } v} \theta_e^2,$$

    constant along the gradient flow of every loss of the path-lifting (in-edges include
    the bias edge of $v$). Ordered as `net.arch.hidden`.
    """
    return squared_weight_laws(net.edge_weights() ** 2, net.arch)


def metric_matrix(net: AbstractReLUNetwork) -> Float[Array, "paths paths"]:
    r"""The metric $M(\theta) = \partial\varphi(\theta)\,\partial\varphi(\theta)^\top$ of the
    lifted dynamics $\dot z = -M(\theta)\nabla\ell(z)$, by the explicit formula of THEORY §4:

    $$M(\theta)_{pq} = \sum_{e \in p \cap q} \frac{z_p z_q}{\theta_e^2},$$

    evaluated division-free (see [`node_flow.relu.path_metric`][]), so it is defined when
    weights vanish. Equals [`node_flow.metric`][] applied to the columns of the identity.
    """
    return path_metric(net.edge_weights(), net.arch)
