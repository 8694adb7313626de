r"""The metric $M(\theta) = \partial\varphi(\theta) \partial\varphi(\theta)^\top$ as an operator."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._lifting import forward_mode, precondition, reverse_mode


@eqx.filter_jit
def metric(model: eqx.Module, G: Array) -> Array:
    r"""Apply the metric of the lifted dynamics, $M(\theta)[G] = \partial\varphi(\theta)\,
    P^{-1} \partial\varphi(\theta)^\top [G]$, without forming the Jacobian.

    For the gradient flow of $L(\theta) = \ell(\varphi(\theta))$ the lifted variable obeys
    $\dot z = -M(\theta) \nabla \ell(z)$ (THEORY §1). $\partial\varphi^\top[G]$ is a
    vector–Jacobian product and $\partial\varphi[\cdot]$ a Jacobian–vector product of
    `model.lift()`. $P$ is the model's training metric: the identity for plain parameters
    (e.g. [`node_flow.LinearNetwork`][]), $(1/L)\sum_k \|A_k\|^2$ for
    [`node_flow.ResidualLinearNetwork`][], the $L^2$ metric for
    [`node_flow.LinearNeuralODE`][], so that `gradient_flow` always satisfies
    $\dot z = -\text{time\_scale} \cdot M(\theta)\nabla\ell(z)$.

    **Arguments:** `model`, any `eqx.Module` with a `.lift()` method; `G`, an array of the
    shape of `model.lift()`.

    **Returns:** $M(\theta)[G]$, shaped like `G`. Jit-compiled (once per model structure
    and shape).
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    lift = lambda p: reverse_mode(eqx.combine(p, static)).lift()
    z, vjp = jax.vjp(lift, params)
    G = jnp.asarray(G, dtype=z.dtype)
    if G.shape != z.shape:
        raise ValueError(f"metric: G must have the shape of z {z.shape}; got {G.shape}.")
    (cotangent,) = vjp(G)
    direction = precondition(model, cotangent)
    # The jvp goes through the model's forward-mode twin (same arrays, other static
    # options), so it is taken over the flat list of array leaves.
    f_params, f_static = eqx.partition(forward_mode(model), eqx.is_inexact_array)
    f_def = jax.tree.structure(f_params)
    f_lift = lambda leaves: eqx.combine(jax.tree.unflatten(f_def, leaves), f_static).lift()
    _, MG = jax.jvp(f_lift, (jax.tree.leaves(params),), (jax.tree.leaves(direction),))
    return MG
