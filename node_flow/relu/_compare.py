"""The parameter flow of [`node_flow.relu.train`][] against the intrinsic dynamic in $z$,
interval by interval."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._flow import FlowError, intrinsic_flow
from ._lifting import path_features, path_products
from ._rescaling import _check_determined, IntrinsicKernel
from ._sliding import gates_of, sliding_gates


@eqx.filter_jit
def _velocity_gap(problem, structure, kernel, thetas):
    r"""$\max_p |\dot z_p + (K(z, h_0)\nabla\ell_G(z))_p| / \max_p |\dot z_p|$ at each state,
    with $\dot z = \partial\varphi(\theta)\,F_G(\theta)$ the lifted parameter velocity."""
    arch = problem.net.arch

    def one(theta):
        G = gates_of(structure, sliding_gates(problem, structure, theta))
        F = problem.field(theta, G)
        z, zdot = jax.jvp(lambda th: path_products(th, arch), (theta,), (F,))
        features = path_features(problem.X, G, arch)
        E = jnp.asarray(np.eye(len(arch.outputs))[arch.path_output], dtype=z.dtype)

        def loss(z):
            return jnp.sum(((features * z) @ E - problem.Y) ** 2) / (2 * problem.X.shape[0])

        v = -kernel(z, jax.grad(loss)(z))
        return jnp.max(jnp.abs(zdot - v)) / jnp.max(jnp.abs(zdot))

    return jax.vmap(one)(thetas)


def _flow_gap(problem, row, zs, kernel, options):
    """The intrinsic flow from $z(t_k)$ on a fixed-pattern interval; its z and the error."""
    from ._training import PatternLoss

    arch = problem.net.arch
    features = path_features(problem.X, jnp.asarray(row["pattern"]), arch)
    loss = PatternLoss(features, problem.Y, arch)
    isol = intrinsic_flow(zs[0], loss, kernel, row["t1"], t0=row["t0"], ts=row["ts"], **options)
    err = float(jnp.max(jnp.abs(zs - isol.zs)) / jnp.max(jnp.abs(zs)))
    return isol.zs, err


def compare_intervals(problem, rows, structures, zs, h0, options):
    """Per interval: (intrinsic z or `None`, error or `None`, kind, note)."""
    kernel = IntrinsicKernel(h0, problem.net.arch)
    out = []
    for row, structure, z in zip(rows, structures, zs):
        kind = "velocity" if row["sliding"] else "flow"
        try:
            _check_determined("train (intrinsic comparison)", z[0], problem.net.arch)
            if kind == "flow":
                zi, err = _flow_gap(problem, row, z, kernel, options)
            else:
                gap = _velocity_gap(problem, structure, kernel, row["thetas"])
                zi, err = None, float(jnp.max(gap))
        except (ValueError, FlowError, eqx.EquinoxRuntimeError) as error:
            note = f"skipped: {str(error).splitlines()[0]}"
            out.append((None, None, kind, note))
            continue
        out.append((zi, err, kind, ""))
    return out
