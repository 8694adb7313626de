"""The abstract base of every model whose training node_flow simulates."""

import abc

import equinox as eqx
from jaxtyping import Array, PyTree


class AbstractLifting(eqx.Module):
    r"""A parametrized model seen through its lifting $z = \varphi(\theta)$.

    Subclasses implement `lift`. Any `eqx.Module` with a `.lift()` method can be trained
    by [`node_flow.gradient_flow`][]; subclassing this base only adds the option of a
    training metric other than the Euclidean one (see `precondition`).
    """

    @abc.abstractmethod
    def lift(self) -> Array:
        r"""The lifted variable $z = \varphi(\theta)$."""

    def precondition(self, grads: PyTree[Array]) -> PyTree[Array]:
        r"""Turn the Euclidean gradient $\nabla_\theta L$ into the gradient for the
        model's training metric $P$: returns $P^{-1} \nabla_\theta L$.

        The default is the Euclidean metric ($P = I$). `grads` has the structure of the
        model's inexact-array leaves (as given by `eqx.partition(model, eqx.is_inexact_array)`).
        """
        return grads

    def forward_mode(self) -> "AbstractLifting":
        """The same model, with a `lift` that supports forward-mode autodiff (`jax.jvp`).

        The default is the model itself. Models whose `lift` is a diffrax solve
        differentiated in reverse mode return a copy that uses `diffrax.ForwardMode`.
        """
        return self

    def reverse_mode(self) -> "AbstractLifting":
        """The same model, with a `lift` specialized for reverse-mode autodiff (`jax.grad`).

        The default is the model itself. Deep linear networks of equal widths return a copy
        whose product has a hand-written, fused reverse pass (see
        `node_flow._chain.chain_product_reverse`); that copy does not support `jax.jvp`.
        [`node_flow.gradient_flow`][] and [`node_flow.metric`][] take gradients through it.
        """
        return self


def forward_mode(model: eqx.Module) -> eqx.Module:
    """`model.forward_mode()` for node_flow models, the model itself for any other module."""
    if isinstance(model, AbstractLifting):
        return model.forward_mode()
    return model


def reverse_mode(model: eqx.Module) -> eqx.Module:
    """`model.reverse_mode()` for node_flow models, the model itself for any other module."""
    if isinstance(model, AbstractLifting):
        return model.reverse_mode()
    return model


def precondition(model: eqx.Module, grads: PyTree[Array]) -> PyTree[Array]:
    """`model.precondition(grads)` for node_flow models, the identity for any other module."""
    if isinstance(model, AbstractLifting):
        return model.precondition(grads)
    return grads
