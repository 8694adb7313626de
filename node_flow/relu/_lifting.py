r"""The path-lifting of a ReLU network, its Jacobian and the metric $M(\theta)$."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._architecture import Architecture


def _check_edges(fname: str, theta, arch: Architecture) -> None:
    if theta.shape != (arch.num_edges,):
        raise ValueError(
            f"{fname}: expected {arch.num_edges} edge weights (one per edge of the "
            f"architecture); got an array of shape {theta.shape}."
        )


def _padded(theta: Float[Array, " edges"], arch: Architecture) -> Float[Array, "paths depth"]:
    """The weights along each path, padded with ones (one gather, no Python loop)."""
    padded = jnp.concatenate([theta, jnp.ones((1,), dtype=theta.dtype)])
    return padded[arch.path_edges]


@eqx.filter_jit
def path_products(theta: Float[Array, " edges"], arch: Architecture) -> Float[Array, " paths"]:
    r"""The path-lifting $z_p = \prod_{e \in p} \theta_e$, one entry per path of `arch`
    (in the order of [`node_flow.relu.Architecture`][]).

    **Arguments:** `theta`, the edge weights in the order of `arch.edges`; `arch`.

    **Returns:** $z$, shape `(arch.num_paths,)`.
    """
    _check_edges("path_products", theta, arch)
    return jnp.prod(_padded(theta, arch), axis=1)


@eqx.filter_jit
def path_jacobian(theta: Float[Array, " edges"], arch: Architecture) -> Float[Array, "paths edges"]:
    r"""The Jacobian $J = \partial\varphi(\theta)$ of the path-lifting, explicitly:

    $$J_{pe} = [e \in p] \prod_{f \in p,\, f \neq e} \theta_f \qquad (= z_p / \theta_e
    \text{ when } \theta_e \neq 0).$$

    The leave-one-out products are formed from exclusive prefix and suffix products along
    each path, so $J$ is exact (no division) when some weights vanish.
    """
    _check_edges("path_jacobian", theta, arch)
    vals = _padded(theta, arch)
    ones = jnp.ones((vals.shape[0], 1), dtype=vals.dtype)
    prefix = jnp.cumprod(jnp.concatenate([ones, vals[:, :-1]], axis=1), axis=1)
    suffix = jnp.cumprod(jnp.concatenate([ones, vals[:, :0:-1]], axis=1), axis=1)[:, ::-1]
    leave_one_out = prefix * suffix
    rows = jnp.arange(vals.shape[0])[:, None]
    J = jnp.zeros((vals.shape[0], arch.num_edges + 1), dtype=vals.dtype)
    # Padding positions point at the extra last column, which is dropped.
    return J.at[rows, arch.path_edges].set(leave_one_out)[:, :-1]


@eqx.filter_jit
def path_metric(theta: Float[Array, " edges"], arch: Architecture) -> Float[Array, "paths paths"]:
    r"""$M(\theta) = \partial\varphi\,\partial\varphi^\top$ for the path-lifting (THEORY §4):

    $$M(\theta)_{pq} = \sum_{e \in p \cap q} \frac{z_p z_q}{\theta_e^2}
    = \sum_{e \in p \cap q} \Big(\prod_{f \in p \setminus e} \theta_f\Big)
      \Big(\prod_{f \in q \setminus e} \theta_f\Big),$$

    computed in the second (division-free) form as $J J^\top$ with $J$ from
    [`node_flow.relu.path_jacobian`][]; it is therefore defined when weights vanish.
    """
    J = path_jacobian(theta, arch)
    return J @ J.T


@eqx.filter_jit
def squared_weight_laws(
    theta_sq: Float[Array, " edges"], arch: Architecture
) -> Float[Array, " hidden"]:
    r"""$h_v = \sum_{e \text{ into } v} \theta_e^2 - \sum_{e \text{ out of } v} \theta_e^2$ for
    every hidden neuron, from the squared weights."""
    D = jnp.asarray(arch.neuron_incidence, dtype=theta_sq.dtype)
    return D @ theta_sq


def path_activity(
    active: Bool[Array, "*batch hidden"], arch: Architecture
) -> Bool[Array, "*batch paths"]:
    r"""Whether each path is active: all the hidden neurons it crosses are active."""
    pad = jnp.ones(active.shape[:-1] + (1,), dtype=bool)
    padded = jnp.concatenate([active, pad], axis=-1)
    return jnp.all(padded[..., arch.path_hidden], axis=-1)


@eqx.filter_jit
def path_features(
    X: Float[Array, "samples inputs"],
    active: Bool[Array, "samples hidden"] | Float[Array, "samples hidden"],
    arch: Architecture,
) -> Float[Array, "samples paths"]:
    r"""$\Phi_{ip} = [p \text{ active on } x_i]\; x_{i,\mathrm{in}(p)}$ with $x_{\mathrm{in}} = 1$
    for paths that start at a constant (bias) neuron.

    On the activation region of a pattern, output $o$ of the network on $x_i$ is
    $\sum_{p \text{ ending at } o} \Phi_{ip} z_p$. With floating gates $G_{iv}$ instead of
    a boolean pattern, $\Phi_{ip} = \prod_{v \in p} G_{iv}\, x_{i,\mathrm{in}(p)}$: the
    features of the gated network ([`node_flow.relu.AbstractReLUNetwork`][]`.gated`).
    """
    if X.shape[1] != len(arch.inputs):
        raise ValueError(
            f"path_features: X must have {len(arch.inputs)} columns (one per input "
            f"neuron); got shape {X.shape}."
        )
    ones = jnp.ones((X.shape[0], len(arch.constants)), dtype=X.dtype)
    starts = jnp.concatenate([X, ones], axis=1)[:, arch.path_start]
    if active.dtype == jnp.bool_:
        return jnp.where(path_activity(active, arch), starts, jnp.zeros_like(starts))
    pad = jnp.ones(active.shape[:-1] + (1,), dtype=active.dtype)
    gates = jnp.concatenate([active, pad], axis=-1)[..., arch.path_hidden]
    return starts * jnp.prod(gates, axis=-1).astype(starts.dtype)
