"""From $(z, h_0)$ back to the squared weights: the convex rescaling problem and $K(z, h_0)$."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import is_concrete
from ._architecture import Architecture


def _check_inputs(fname: str, z, h0, arch: Architecture):
    if not isinstance(arch, Architecture):
        raise TypeError(f"{fname}: `arch` must be a node_flow.relu.Architecture (e.g. net.arch).")
    z, h0 = jnp.asarray(z), jnp.asarray(h0)
    if z.shape != (arch.num_paths,):
        raise ValueError(
            f"{fname}: z must have one entry per path, shape ({arch.num_paths},); got {z.shape}."
        )
    if h0.shape != (len(arch.hidden),):
        raise ValueError(
            f"{fname}: h0 must have one entry per hidden neuron, shape ({len(arch.hidden)},); "
            f"got {h0.shape}."
        )
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{fname}: z must be floating; got {z.dtype}.")
    if is_concrete(h0) and not np.all(np.isfinite(np.asarray(h0))):
        raise ValueError(
            f"{fname}: h0 holds non-finite values ({np.asarray(h0).tolist()}); pass the "
            "conservation laws of a finite network, e.g. relu.conservation_laws(net)."
        )
    return z, h0.astype(z.dtype)


def _check_options(fname: str, rtol, max_steps, lifting_rtol) -> None:
    """The solver options of the rescaling problem (static: checked at trace time)."""
    if not (isinstance(rtol, (int, float)) and np.isfinite(rtol) and 0 < rtol < 1):
        raise ValueError(
            f"{fname}: `rtol` must be a number in (0, 1), the relative tolerance on h; got "
            f"{rtol!r} (e.g. 1e-12)."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(
            f"{fname}: `max_steps` must be a positive integer (Newton iterations); got "
            f"{max_steps!r} (e.g. 100)."
        )
    if not (isinstance(lifting_rtol, (int, float)) and lifting_rtol > 0):
        raise ValueError(f"{fname}: `lifting_rtol` must be a number > 0; got {lifting_rtol!r}.")


def _check_determined(fname: str, z, arch: Architecture) -> None:
    """Eager (concrete z) version of the determinacy check, naming the neurons and edges."""
    if isinstance(z, jax.core.Tracer):
        return
    z = np.asarray(z)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{fname}: z holds non-finite values.")
    covered = (z != 0).astype(float) @ arch.incidence > 0
    if np.all(covered):
        return
    bad_edges = [arch.edges[e] for e in np.flatnonzero(~covered)]
    bad_neurons = sorted(
        {v for e in bad_edges for v in e if v in set(arch.hidden)}
        - {v for e, c in zip(arch.edges, covered) if c for v in e}
    )
    raise ValueError(
        f"{fname}: z does not determine the squared weights: edge(s) {bad_edges} lie on no "
        f"path with z_p != 0"
        + (f" (every path through neuron(s) {bad_neurons} is zero)" if bad_neurons else "")
        + ". The rescaling problem is then not strictly convex / has no minimiser."
    )


# Far above lstsq's cutoff (~1e-13 relative) and far below the weight of a path that matters;
# noise δ on a tiny z_p moves the other log-weights by at most ~1e-6 · δ/|z_p|.
_FIT_WEIGHT_FLOOR = 1e-6


def _representative_log_weights(z, arch: Architecture, lifting_rtol):
    r"""$w$ with $\sum_{e \in p} w_e = \log|z_p|$ on the paths with $z_p \neq 0$ (least squares)."""
    P = jnp.asarray(arch.incidence, dtype=z.dtype)
    nonzero = z != 0
    covered = jnp.all(nonzero.astype(z.dtype) @ P > 0)
    z = eqx.error_if(
        z,
        ~covered | ~jnp.all(jnp.isfinite(z)),
        "recover_squares: z does not determine the squared weights: some edge lies on no "
        "path with z_p != 0 (e.g. every path through a neuron is zero), or z is not finite.",
    )
    logz = jnp.where(nonzero, jnp.log(jnp.where(nonzero, jnp.abs(z), 1.0)), 0.0)
    # Rows weighted by |z_p| / max|z|: a log-residual r_p is then the error |z_p| r_p on z_p
    # itself, so tiny entries (a weight crossing zero) neither dominate the fit nor trip the
    # consistency check below by their large relative error.
    # The fit floors the weights at `_FIT_WEIGHT_FLOOR`: an edge that lies only on tiny paths
    # (a bias crossing zero) would otherwise sit in a direction of singular value ~|z_p|,
    # truncated by lstsq like the null space of rescalings, and get log|θ_e| = 0, i.e.
    # θ_e² = 1 instead of ~z_p². The consistency check keeps the unfloored weights.
    weight = jnp.abs(z) / jnp.max(jnp.abs(z))
    fit = jnp.where(nonzero, jnp.maximum(weight, _FIT_WEIGHT_FLOOR), 0.0)
    w = jnp.linalg.lstsq(fit[:, None] * P, fit * logz)[0]
    residual = jnp.max(weight * jnp.abs(P @ w - logz))
    w = eqx.error_if(
        w,
        residual > lifting_rtol,
        "recover_squares: z is not a path-lifting of this architecture: no weights θ have "
        "|φ(θ)| = |z| (the log-system Σ_{e∈p} log|θ_e| = log|z_p|, weighted by |z_p|/max|z|, "
        "is inconsistent beyond `lifting_rtol`).",
    )
    return w


def _newton(theta_sq, h0, arch: Architecture, rtol, max_steps):
    r"""Minimise $F(a) = \tfrac12 \sum_e \theta_e^2 e^{2 (D^\top a)_e} - h_0 \cdot a$ by Newton's
    method with a backtracking (Armijo) line search."""
    D = jnp.asarray(arch.neuron_incidence, dtype=theta_sq.dtype)
    absD = jnp.abs(D)

    def parts(a):
        sq = theta_sq * jnp.exp(2 * (D.T @ a))
        return 0.5 * jnp.sum(sq) - h0 @ a, sq

    def not_converged(sq):
        g = D @ sq - h0
        # h_v is a difference of sums of squares: its rounding error is relative to
        # sum_{e incident to v} θ_e², so that is the scale of the tolerance.
        scale = jnp.max(absD @ sq) + jnp.max(jnp.abs(h0))
        return jnp.max(jnp.abs(g)) > rtol * scale

    def cond(carry):
        a, step = carry
        return (step < max_steps) & not_converged(parts(a)[1])

    def body(carry):
        a, step = carry
        F, sq = parts(a)
        g = D @ sq - h0
        H = 2 * (D * sq) @ D.T
        d = -jnp.linalg.solve(H, g)
        slope = g @ d
        # Rounding slack so that steps in the quadratic regime (|ΔF| ~ ε|F|) are accepted.
        slack = 1e-14 * (jnp.abs(F) + jnp.sum(sq))

        def ls_cond(t):
            F_new = parts(a + t * d)[0]
            return (t > 1e-10) & ~(F_new <= F + 1e-4 * t * slope + slack)

        t = jax.lax.while_loop(ls_cond, lambda t: 0.5 * t, jnp.ones((), dtype=a.dtype))
        return a + t * d, step + 1

    a0 = jnp.zeros((D.shape[0],), dtype=theta_sq.dtype)
    a, _ = jax.lax.while_loop(cond, body, (a0, 0))
    sq = parts(a)[1]
    return eqx.error_if(
        sq,
        not_converged(sq),
        "recover_squares: Newton's method on the rescaling problem did not reach `rtol` "
        "within `max_steps` iterations: weights of very different sizes make it "
        "ill-conditioned; raise `max_steps` or loosen `rtol`.",
    )


def _signed_jacobian(z, theta_sq, arch: Architecture):
    r"""$\tilde J_{pe} = [e \in p]\, \mathrm{sign}(z_p) \prod_{f \in p \setminus e} |\theta_f|$,
    so that $\tilde J \tilde J^\top = \sum_{e \in p \cap q} z_p z_q / \theta_e^2$
    on the image of $\varphi$.

    The leave-one-out products are sums of $\log|\theta_f|$ over the *other* edges: no
    division by $\theta_e^2$, so the kernel stays accurate when a weight crosses zero (then
    $\theta_e^2$, recovered from the tiny $z_p$ through $e$, has a large relative error, but it
    does not enter the terms $z_p z_q / \theta_e^2$)."""
    log_abs = 0.5 * jnp.log(theta_sq)
    padded = jnp.concatenate([log_abs, jnp.zeros((1,), dtype=log_abs.dtype)])[arch.path_edges]
    others = jnp.sum(padded, axis=1, keepdims=True) - padded
    rows = jnp.arange(padded.shape[0])[:, None]
    J = jnp.zeros((padded.shape[0], arch.num_edges + 1), dtype=z.dtype)
    J = J.at[rows, arch.path_edges].set(jnp.exp(others))[:, :-1]
    return jnp.sign(z)[:, None] * J


@eqx.filter_jit
def _recover(z, h0, arch, rtol, max_steps, lifting_rtol):
    h0 = eqx.error_if(
        h0,
        ~jnp.all(jnp.isfinite(h0)),
        "recover_squares: h0 holds non-finite values; pass the conservation laws of a finite "
        "network, e.g. relu.conservation_laws(net).",
    )
    w = _representative_log_weights(z, arch, lifting_rtol)
    theta_sq = jnp.exp(2 * w)
    if len(arch.hidden) == 0:
        return theta_sq
    return _newton(theta_sq, h0, arch, rtol, max_steps)


def recover_squares(
    z: Float[ArrayLike, " paths"],
    h0: Float[ArrayLike, " hidden"],
    arch: Architecture,
    *,
    rtol: float = 1e-12,
    max_steps: int = 100,
    lifting_rtol: float = 1e-6,
) -> Float[Array, " edges"]:
    r"""The squared weights $\theta_e^2$ determined by the path-lifting $z$ and the
    conservation laws $h_0$ (THEORY §4).

    1. A representative of the fibre of $z$: $|\theta_e| = e^{w_e}$ with $w$ the least-squares
       solution of $\sum_{e \in p} w_e = \log|z_p|$ over the paths with $z_p \neq 0$, rows
       weighted by $|z_p|$. Its null space is exactly the neuron rescalings, so any
       solution will do.
    2. The rescaling with $h = h_0$: with log-scales $a_v$ on hidden neurons (0 on inputs,
       constants and outputs), minimise the strictly convex

        $$F(a) = \tfrac12 \sum_{e = u \to v} \theta_e^2 e^{2(a_v - a_u)} - \sum_v h_{0,v} a_v,$$

        whose gradient is $h(\text{rescaled }\theta) - h_0$, by Newton's method with a
        backtracking line search, until $\max_v |h_v - h_{0,v}| \leq$ `rtol` × (largest
        $\sum_{e \ni v} \theta_e^2$ + $\max|h_0|$).

    The minimiser exists and is unique when every edge lies on a path with $z_p \neq 0$;
    otherwise (e.g. every path through some neuron is zero) $z$ does not determine the
    squares and an error names the edges. Only $|z|$ is used: the signs of $z$ do not
    matter for $\theta^2$.

    **Arguments:**

    - `z`: the path-lifting, one entry per path of `arch`.
    - `h0`: the conservation laws $h(\theta_0)$, one per hidden neuron (`arch.hidden` order).
    - `arch`: the static [`node_flow.relu.Architecture`][] (e.g. `net.arch`).
    - `rtol`: the relative tolerance on $h$ (default $10^{-12}$).
    - `max_steps`: the Newton iteration limit.
    - `lifting_rtol`: largest accepted residual of the log-system in step 1, each row
      weighted by $|z_p| / \max|z|$ (so an error on $z_p$ relative to $\max|z|$); larger
      means `z` is not a path-lifting. It is loose so that a $z$ produced by an ODE solver
      (off the image by its tolerance) is accepted.

    **Returns:** $\theta^2$, in the order of `arch.edges`.
    """
    fname = "recover_squares"
    z, h0 = _check_inputs(fname, z, h0, arch)
    _check_options(fname, rtol, max_steps, lifting_rtol)
    _check_determined(fname, z, arch)
    return _recover(z, h0, arch, rtol, max_steps, lifting_rtol)


def intrinsic_kernel(
    z: Float[ArrayLike, " paths"],
    h0: Float[ArrayLike, " hidden"],
    arch: Architecture,
    *,
    rtol: float = 1e-12,
    max_steps: int = 100,
    lifting_rtol: float = 1e-6,
) -> Float[Array, "paths paths"]:
    r"""The intrinsic kernel $K(z, h_0)$, a $d \times d$ matrix with
    $K(\varphi(\theta), h(\theta)) = M(\theta)$ (THEORY §4):

    $$K(z, h_0)_{pq} = \sum_{e \in p \cap q} \frac{z_p z_q}{\theta_e^2}
    = \mathrm{sign}(z_p z_q) \sum_{e \in p \cap q} \prod_{f \in p \setminus e} |\theta_f|
      \prod_{f \in q \setminus e} |\theta_f|,\qquad
    \theta^2 = \texttt{recover\_squares}(z, h_0),$$

    evaluated in the second form (logs of the other weights, no division by $\theta_e^2$),
    which stays accurate when a weight crosses zero along a flow.

    Along a gradient flow started at $\theta_0$, $\dot z = -K(z, h(\theta_0)) \nabla\ell(z)$
    on every interval where the activation pattern is fixed. Options as in
    [`node_flow.relu.recover_squares`][].
    """
    fname = "intrinsic_kernel"
    z, h0 = _check_inputs(fname, z, h0, arch)
    _check_options(fname, rtol, max_steps, lifting_rtol)
    _check_determined(fname, z, arch)
    theta_sq = _recover(z, h0, arch, rtol, max_steps, lifting_rtol)
    J = _signed_jacobian(z, theta_sq, arch)
    return J @ J.T


class IntrinsicKernel(eqx.Module):
    r"""The intrinsic kernel as an operator, $(z, G) \mapsto K(z, h_0)\, G$, for
    [`node_flow.intrinsic_flow`][]:

    $$K(z, h_0) G = \tilde J (\tilde J^\top G), \qquad \tilde J_{pe} = [e \in p]\,
      \mathrm{sign}(z_p) \prod_{f \in p \setminus e} |\theta_f|,$$

    with $\theta^2$ from
    [`node_flow.relu.recover_squares`][] (no $d \times d$ matrix is formed). An
    `eqx.Module`, so a new $h_0$ does not trigger recompilation.

    Off the image of $\varphi$ the kernel is extended smoothly through the weighted
    least-squares representative of step 1 of `recover_squares`: an ODE solver evaluates it
    at Runge–Kutta stages and at its initial-step probe, which leave the image by far more
    than the solver tolerance. That is why `lifting_rtol` defaults to `inf` here.
    """

    h0: Float[Array, " hidden"]
    arch: Architecture = eqx.field(static=True)
    rtol: float = eqx.field(static=True, default=1e-12)
    max_steps: int = eqx.field(static=True, default=100)
    lifting_rtol: float = eqx.field(static=True, default=float("inf"))

    def __call__(
        self, z: Float[Array, " paths"], G: Float[Array, " paths"]
    ) -> Float[Array, " paths"]:
        z, h0 = _check_inputs("IntrinsicKernel", z, self.h0, self.arch)
        _check_options("IntrinsicKernel", self.rtol, self.max_steps, self.lifting_rtol)
        theta_sq = _recover(z, h0, self.arch, self.rtol, self.max_steps, self.lifting_rtol)
        J = _signed_jacobian(z, theta_sq, self.arch)
        return J @ (J.T @ G)


def two_layer_squares(
    z: Float[ArrayLike, " paths"], h0: Float[ArrayLike, " hidden"], arch: Architecture
) -> Float[Array, " edges"]:
    r"""The closed form of THEORY §4 for networks whose paths cross at most one hidden
    neuron (two-layer MLPs, with or without biases and direct input→output edges).

    Hidden neuron $j$ sees $z_j = u_j v_j^\top$ ($u_j$ its out-weights, $v_j$ its in-weights
    including its bias). With $\delta_j = \|u_j\|^2 - \|v_j\|^2 = -h_{0,j}$:

    $$\|u_j\|^2 = \tfrac12\big(\delta_j + (\delta_j^2 + 4\|z_j\|^2)^{1/2}\big),
      \qquad \|v_j\|^2 = \|u_j\|^2 - \delta_j,$$

    then $\theta_e^2 = \sum_{p \ni e} z_p^2 / \|v_j\|^2$ for an out-edge of $j$,
    $/\|u_j\|^2$ for an in-edge, and $\theta_e^2 = z_p^2$ for an edge that is a whole path.
    """
    fname = "two_layer_squares"
    z, h0 = _check_inputs(fname, z, h0, arch)
    if arch.depth > 2:
        raise ValueError(
            f"{fname}: needs paths of at most two edges; `arch` has depth {arch.depth}."
        )
    P = jnp.asarray(arch.incidence, dtype=z.dtype)
    S = P.T @ z**2  # S_e = Σ_{p∋e} z_p²
    D = np.asarray(arch.neuron_incidence)
    into = jnp.asarray(D > 0, dtype=z.dtype)
    out_of = jnp.asarray(D < 0, dtype=z.dtype)
    znorm_sq = into @ S  # ||z_j||² = Σ over the in-edges of j of S_e
    delta = -h0
    root = jnp.sqrt(delta**2 + 4 * znorm_sq)
    # The two algebraically equal forms; each is free of cancellation on its side of 0.
    safe = jnp.where(delta >= 0, 1.0, root - delta)
    u_sq = jnp.where(delta >= 0, 0.5 * (delta + root), 2 * znorm_sq / safe)
    v_sq = u_sq - delta
    div_in = into.T @ u_sq  # for an in-edge of j: ||u_j||²
    div_out = out_of.T @ v_sq  # for an out-edge of j: ||v_j||²
    divisor = div_in + div_out + (1.0 - jnp.clip(into.sum(0) + out_of.sum(0), 0.0, 1.0))
    return S / divisor
