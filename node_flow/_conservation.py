"""Conservation laws of deep linear and residual networks."""

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._linear import LinearNetwork
from ._residual import ResidualLinearNetwork


def stacked_conservation_laws(
    U: Float[Array, "*batch depth n n"],
) -> Float[Array, "*batch laws n n"]:
    UT = jnp.swapaxes(U, -1, -2)
    return UT[..., 1:, :, :] @ U[..., 1:, :, :] - U[..., :-1, :, :] @ UT[..., :-1, :, :]


def conservation_laws(net: LinearNetwork | ResidualLinearNetwork):
    r"""The conservation laws $C_j = U_{j+1}^\top U_{j+1} - U_j U_j^\top \in S^{n_j}$,
    $j = 1, \dots, L-1$, of a deep linear network (THEORY §2).

    They are constant along the gradient flow of every loss of $z$. The network is
    *balanced* when all $C_j = 0$ and *relaxed balanced* when $C_j = \lambda_j I$.

    **Arguments:** `net`, a [`node_flow.LinearNetwork`][] or a
    [`node_flow.ResidualLinearNetwork`][] (factors $U_k = I + A_k / L$; there
    $L^2 C_k \to \Lambda(s)$ as $L \to \infty$).

    **Returns:** a tuple of $L - 1$ symmetric matrices for a `LinearNetwork`; an array of
    shape `(L - 1, n, n)` for a `ResidualLinearNetwork`. Leading batch axes (e.g. the time
    axis of `FlowSolution.models`) are kept in front of the matrix axes.
    """
    if isinstance(net, ResidualLinearNetwork):
        return stacked_conservation_laws(net.factors())
    if isinstance(net, LinearNetwork):
        W = net.weights
        T = lambda U: jnp.swapaxes(U, -1, -2)
        return tuple(T(W[j + 1]) @ W[j + 1] - W[j] @ T(W[j]) for j in range(net.depth - 1))
    raise TypeError(
        "conservation_laws: expected a LinearNetwork or a ResidualLinearNetwork; "
        f"got {type(net).__name__}."
    )
