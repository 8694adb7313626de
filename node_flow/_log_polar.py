r"""The balanced intrinsic flow in log-polar coordinates: rank and sign of det kept exactly.

For a balanced depth-$N$ linear network ($N \ge 2$) the intrinsic flow
$\dot z = -K_N(z)[\nabla\ell(z)]$ (THEORY §2) moves each singular value by
$\dot\sigma_a = -N\sigma_a^{2-2/N}(X^\top G Y)_{aa}$: a singular value never reaches zero in
finite time, so the rank of $z$ and the sign of $\det z$ are invariants. Integrating $z$
itself does not keep them: once $\sigma_{\min}$ falls to the solver's absolute error, a
step can carry $z$ across $\det z = 0$ (the Razin & Cohen 2020 setting does, at depth 2).

Here $z$ is written as

$$z = Q\, e^{S}, \qquad Q \in O(n)\ (\det Q = \operatorname{sign}\det z), \qquad
S = S^\top \ (\text{its eigenvalues are } \rho_a = \ln\sigma_a),$$

the polar decomposition with the positive factor in logarithmic coordinates. Every state
$(Q, S)$ is a full-rank $z$ with $\operatorname{sign}\det z = \det Q$, and a singular value
tending to zero is $\rho_a \to -\infty$ at a bounded rate. In the eigenbasis $S = R
\operatorname{diag}(\rho) R^\top$, with $\tilde H = R^\top Q^\top G R$ split into its
symmetric and skew parts $\tilde H^s, \tilde H^a$, $m_{ab} = \rho_a + \rho_b$,
$\delta_{ab} = \rho_a - \rho_b$ and

$$A_{ab} = N e^{(1/2 - 1/N) m_{ab}}\,
  \frac{\operatorname{sinhc}\delta_{ab}}{\operatorname{sinhc}(\delta_{ab}/N)}
  = \frac{W_{ab}}{\sqrt{\sigma_a\sigma_b}},\qquad
  W_{ab} = \frac{\sigma_a^2 - \sigma_b^2}{\sigma_a^{2/N} - \sigma_b^{2/N}}$$

(the kernel's weights, `kernels.balanced`), the flow is

$$R^\top \dot S R = -\frac{A \circ \big(\tilde H^s + \tanh(\delta/2) \circ \tilde H^a\big)}
  {\operatorname{sinhc}(\delta/2)}, \qquad
  R^\top Q^\top \dot Q R = -\frac{A \circ \tilde H^a}{\cosh(\delta/2)}.$$

*Derivation.* With $P = e^S$ and $M = R^\top Q^\top \dot z R = -W \circ \tilde H$, the
equation $Q^\top\dot z = \Omega P + \dot P$ ($\Omega = Q^\top\dot Q$ skew, $\dot P$ symmetric)
reads $M_{ab} = \Omega'_{ab}\sigma_b + \dot P'_{ab}$ in the eigenbasis, so
$\Omega'_{ab} = (M_{ab} - M_{ba})/(\sigma_a + \sigma_b)$ and
$\dot P'_{ab} = (M_{ab}\sigma_a + M_{ba}\sigma_b)/(\sigma_a + \sigma_b)$; then
$\dot S' = \dot P' \circ \ln[\sigma_a, \sigma_b]$, the divided difference of the logarithm
(Daleckii–Krein). With $\sigma = e^\rho$ every ratio is one of the smooth even functions
above. The diagonal is $\dot\rho_a = -N\sigma_a^{1-2/N}\tilde H_{aa}$.

*Why not the singular value decomposition* $z = U e^{\operatorname{diag}\rho} V^\top$: its
rotation rates divide by $\sigma_a^{2/N} - \sigma_b^{2/N}$ and are singular where two
singular values coincide (balanced starts $c\,I$, and near-crossings along the flow). The
polar form divides by nothing: $\sinh c$, $\cosh$ and $\operatorname{sinhc}$ are positive,
the weights are continuous where eigenvalues of $S$ coincide, and they are bounded as
$\sigma_b \to 0$ for every $N \ge 2$ ($A_{ab} \to N\sigma_a^{1-2/N}\dots$; both rates stay
finite even when two singular values tend to zero together). At depth 1 (plain gradient
flow) the rank is not invariant and the form does not apply.

*Floor.* At depth 2, $\dot\rho_{\min} = -2\tilde H_{\min\min}$ does not vanish as
$\sigma_{\min} \to 0$: $\ln\sigma_{\min}$ decreases linearly for ever (to $-10^5$ over a long
Razin–Cohen run), and the entries of $S$, which carry the eigenbasis scaled by the gaps
$\rho_a - \rho_b$, grow with it, which cost the implicit solvers 17 times more steps. Once
$(\sigma_a/\sigma_{\max})^{2/N} < e^{-80}$, i.e. $\rho_{\max} - \rho_a > 40N$, the factor
`_floor_factor` (a sigmoid of unit width) switches $\dot\rho_a$ off; the rotation rates are
kept. This changes $z$ by less than $e^{-40N}\sigma_{\max}$ and the other rates by terms of
relative size $e^{-80}$, far below rounding; the sign of $\det z$ and the rank are unaffected,
and `LogPolar.log_singular_values` then reports the floor, not the exact $\ln\sigma_a$.

*Orthogonality.* The field is evaluated at $\hat Q = Q(3I - Q^\top Q)/2$ (a Newton–Schulz
step to the polar factor: orthogonal to second order in the drift $Q^\top Q - I$) and carries
the stabilizing term $\hat Q - Q$, which vanishes on $O(n)$ and pulls the state back to it
at unit rate, so the round-off and truncation drift does not accumulate; $z = \hat Q e^S$.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import check_finite, check_real, is_concrete
from ._custom_types import Loss, ScalarLike
from ._flow import check_scalar_loss, flow_options
from ._integrate import finish, integrate
from ._solution import FlowSolution
from .kernels._neural_ode import _sinhc


def _log_sinhc(x: Array) -> Array:
    r"""$\ln(\sinh x / x)$ without overflow: $|x| - \ln 2|x| + \ln(1 - e^{-2|x|})$ for
    $|x| > 1$, the logarithm of `_sinhc` (a value in $[1, 1.18]$) below."""
    ax = jnp.abs(x)
    big = ax > 1.0
    axb = jnp.where(big, ax, 2.0)
    large = axb - jnp.log(2.0 * axb) + jnp.log1p(-jnp.exp(-2.0 * axb))
    return jnp.where(big, large, jnp.log(_sinhc(jnp.where(big, 0.0, x))))


def _log_cosh(x: Array) -> Array:
    ax = jnp.abs(x)
    return ax + jnp.log1p(jnp.exp(-2.0 * ax)) - jnp.log(2.0)


def _near_orthogonal(Q: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """One Newton–Schulz step to the orthogonal polar factor of `Q` (error quadratic in the
    drift of `Q` from O(n); a polynomial, so differentiable everywhere)."""
    n = Q.shape[0]
    return Q @ (1.5 * jnp.eye(n, dtype=Q.dtype) - 0.5 * Q.T @ Q)


class LogPolar(eqx.Module):
    r"""A full-rank square matrix in log-polar form, $z = Q e^S$ (see
    [`node_flow.log_polar_flow`][]): $Q$ orthogonal (up to the solver's drift, corrected
    to second order when $z$ is formed), $S$ symmetric with eigenvalues $\ln\sigma_a(z)$.
    Leading axes are time axes in a [`node_flow.FlowSolution`][].

    **Fields:** `Q`, `S` (arrays of shape `(..., n, n)`).
    """

    Q: Float[Array, "*t n n"]
    S: Float[Array, "*t n n"]

    @classmethod
    def from_matrix(cls, z: Float[ArrayLike, "n n"]) -> "LogPolar":
        r"""The log-polar form of a full-rank square `z`: with $z = X\operatorname{diag}(s)
        Y^\top$, $Q = XY^\top$ and $S = Y\operatorname{diag}(\ln s)Y^\top$."""
        X, s, Yt = jnp.linalg.svd(jnp.asarray(z))
        return cls(Q=X @ Yt, S=(Yt.T * jnp.log(s)) @ Yt)

    def lift(self) -> Float[Array, "*t n n"]:
        """$z = \\hat Q e^S$ (with $\\hat Q$ the Newton–Schulz-corrected $Q$)."""
        return jnp.vectorize(_to_matrix, signature="(n,n),(n,n)->(n,n)")(self.Q, self.S)

    def log_singular_values(self) -> Float[Array, "*t n"]:
        r"""$\ln\sigma_a(z)$ in decreasing order, exactly as carried by the flow (no
        rounding of tiny singular values against large ones, unlike an SVD of $z$)."""
        S = 0.5 * (self.S + jnp.swapaxes(self.S, -1, -2))
        return jnp.flip(jnp.linalg.eigvalsh(S), axis=-1)

    def det_sign(self) -> Float[Array, "*t"]:
        r"""$\operatorname{sign}\det z = \operatorname{sign}\det Q$ ($\pm 1$)."""
        return jnp.sign(jnp.linalg.det(self.Q))

    def orthogonality_drift(self) -> Float[Array, "*t"]:
        r"""$\|Q^\top Q - I\|_2$: how far the stored $Q$ has drifted from $O(n)$."""
        n = self.Q.shape[-1]
        E = jnp.swapaxes(self.Q, -1, -2) @ self.Q - jnp.eye(n, dtype=self.Q.dtype)
        return jnp.linalg.norm(E, ord=2, axis=(-2, -1))


def _to_matrix(Q, S):
    rho, R = jnp.linalg.eigh(0.5 * (S + S.T))
    return (_near_orthogonal(Q) @ R * jnp.exp(rho)) @ R.T


def _unpack(y, n):
    return y[: n * n].reshape(n, n), y[n * n :].reshape(n, n)


# ln σ_a stops decreasing once (σ_a/σ_max)^{2/N} < e^{-2·40} (module docstring, "Floor").
_FLOOR_PER_DEPTH = 40.0


def _floor_factor(rho: Float[Array, " n"], depth: int) -> Float[Array, " n"]:
    r"""A smooth switch from 1 (for $
    ho_{\max} -
    ho_a < 40N - 10$) to 0 (beyond $40N +
        10$): the factor on $\dot
    ho_a$ that floors $\ln\sigma_a$ far below rounding."""
    return jax.nn.sigmoid(-2.0 * (rho[-1] - rho - _FLOOR_PER_DEPTH * depth))


class _LogPolarField(eqx.Module):
    r"""$y = (Q, S) \mapsto (\dot y,\ \langle\nabla\ell, \dot z\rangle,\ \ell)$ (module
    docstring)."""

    loss: Loss
    depth: int = eqx.field(static=True)
    n: int = eqx.field(static=True)
    time_scale: Any

    def __call__(self, y):
        N, n = self.depth, self.n
        Q, S = _unpack(y, n)
        Qh = _near_orthogonal(Q)
        rho, R = jnp.linalg.eigh(0.5 * (S + S.T))
        QR = Qh @ R
        z = (QR * jnp.exp(rho)) @ R.T
        value, G = jax.value_and_grad(self.loss)(z)
        H = QR.T @ G @ R
        Hs, Ha = 0.5 * (H + H.T), 0.5 * (H - H.T)
        m = rho[:, None] + rho[None, :]
        d = rho[:, None] - rho[None, :]
        log_a = jnp.log(N) + (0.5 - 1.0 / N) * m + _log_sinhc(d) - _log_sinhc(d / N)
        s_dot = -jnp.exp(log_a - _log_sinhc(0.5 * d)) * (Hs + jnp.tanh(0.5 * d) * Ha)
        s_dot = s_dot - jnp.diag(jnp.diagonal(s_dot) * (1.0 - _floor_factor(rho, N)))
        omega = -jnp.exp(log_a - _log_cosh(0.5 * d)) * Ha
        # ⟨∇ℓ, ż⟩ = −Σ W_ab H_ab², W = A e^{m/2}: the descent rate for the ascent monitor.
        rate = -jnp.sum(jnp.exp(log_a + 0.5 * m) * H * H)
        tau = self.time_scale
        dQ = tau * (QR @ omega @ R.T) + (Qh - Q)
        dS = tau * (R @ s_dot @ R.T)
        return jnp.concatenate([dQ.ravel(), dS.ravel()]), tau * rate, value


class _SaveLogPolar(eqx.Module):
    loss: Loss
    n: int = eqx.field(static=True)

    def __call__(self, y):
        Q, S = _unpack(y, self.n)
        z = _to_matrix(Q, S)
        return {"zs": z, "losses": self.loss(z), "ys": y}


class _StateToMatrix(eqx.Module):
    """The solver state ↦ z (for dense output and events)."""

    n: int = eqx.field(static=True)

    def __call__(self, y):
        return _to_matrix(*_unpack(y, self.n))


class _MatrixEvent(eqx.Module):
    event: Callable
    to_matrix: _StateToMatrix

    def __call__(self, t, y):
        return self.event(t, self.to_matrix(y))


@eqx.filter_jit
def _log_polar_core(y0, loss, depth, event, time_scale, t0, t1, ts, options):
    n = int(round(np.sqrt(y0.shape[0] // 2)))
    to_matrix = _StateToMatrix(n)
    if event is not None:
        options = dataclasses.replace(options, event=_MatrixEvent(event, to_matrix))
    field = _LogPolarField(loss, depth, n, time_scale)
    raw = integrate(field, _SaveLogPolar(loss, n), y0, t0, t1, ts, options)
    ys = raw[1]["ys"]
    states = LogPolar(Q=ys[:, : n * n].reshape(-1, n, n), S=ys[:, n * n :].reshape(-1, n, n))
    return raw, states, to_matrix


# A z whose σ_min / σ_max is below this multiple of n·eps is numerically singular: its
# log-polar form (ln σ_min) would be rounding noise.
_SINGULAR_ULPS = 10


def _check_full_rank(fname: str, z0) -> None:
    if not is_concrete(z0):
        return
    s = np.linalg.svd(np.asarray(z0, dtype=np.float64), compute_uv=False)
    eps = float(jnp.finfo(z0.dtype).eps)
    if not s[-1] > _SINGULAR_ULPS * z0.shape[0] * eps * s[0]:
        raise ValueError(
            f"{fname}: `z0` is singular to working precision (singular values {s}); the "
            "log-polar form represents full-rank matrices only. The balanced flow keeps the "
            "rank of z, so a rank-deficient start stays rank-deficient: use "
            "`node_flow.intrinsic_flow` with `kernels.balanced` for it."
        )


def _check_depth(fname: str, depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 2:
        raise ValueError(
            f"{fname}: `depth` must be an integer ≥ 2 (at depth 1, plain gradient flow, the "
            f"rank of z is not invariant and the log-polar form does not apply); got {depth!r}."
        )
    return int(depth)


def log_polar_flow(
    z0: ArrayLike,
    loss: Loss,
    depth: int,
    t1: ScalarLike,
    *,
    ts: ArrayLike | None = None,
    t0: ScalarLike = 0.0,
    rtol: ScalarLike = 1e-8,
    atol: ScalarLike = 1e-8,
    time_scale: ScalarLike = 1.0,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    dt0: ScalarLike | None = None,
    max_steps: int | None = 100_000,
    blowup: ScalarLike = 1e8,
    event: Callable[[Any, Any], Any] | None = None,
    target_loss: ScalarLike | None = None,
    throw: bool = True,
    dense: bool = False,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
) -> FlowSolution:
    r"""The balanced depth-$N$ intrinsic flow $\dot z = -\tau K_N(z)[\nabla\ell(z)]$ in
    log-polar coordinates $z = Q e^S$: the rank of $z$ and the sign of $\det z$ are kept
    exactly, however close $z$ comes to rank deficiency.

    The same flow as [`node_flow.intrinsic_flow`][] with
    `lambda z, G: kernels.balanced(z, G, depth)` (Arora, Cohen & Hazan 2018), integrated in
    the coordinates of `node_flow/_log_polar.py`: $Q \in O(n)$ with
    $\det Q = \operatorname{sign}\det z_0$, $S$ symmetric with eigenvalues
    $\rho_a = \ln\sigma_a$, so that $\dot\rho_a = -N\sigma_a^{1-2/N}(X^\top\nabla\ell\,Y)_{aa}$
    and a vanishing singular value is a bounded drift of $\rho_a$ to $-\infty$. Use it when
    $z$ approaches rank deficiency (implicit-bias studies run to small loss, e.g. Razin &
    Cohen 2020), where integrating $z$ itself can cross $\det z = 0$. Nothing in the
    coordinates is singular at repeated singular values.

    Long flows to small loss are stiff (the fast rate grows like $N\sigma_{\max}^{2-2/N}$
    while the loss decays slowly): pass an implicit solver, e.g.
    `solver=diffrax.Kvaerno5()` (its Jacobian is taken by forward-mode autodiff through
    the eigendecomposition of $S$, finite where the eigenvalues of $S$ are distinct).

    It runs on the one flow core (`node_flow._integrate.integrate`): options, failures
    ([`node_flow.RESULTS`][], [`node_flow.FlowError`][]), dense output and events behave
    as in [`node_flow.intrinsic_flow`][].

    **Arguments:**

    - `z0`: a square, full-rank real floating matrix (a numerically singular one is
      refused: the flow keeps its rank, see [`node_flow.intrinsic_flow`][] for that).
    - `loss`: any callable `z ↦ scalar`.
    - `depth`: the depth $N \ge 2$ of the balanced network.
    - `t1`: final training time.
    - `event`: optional `(t, z) ↦ bool or real scalar` (stops the solve; `.t_final`).
    - the remaining options as in [`node_flow.gradient_flow`][] (`blowup` bounds the
      state $(Q, S)$: $|S| \approx |\ln\sigma|$).

    **Returns:** a [`node_flow.FlowSolution`][] whose `.zs` are $z = Q e^S$ at `ts` and whose
    `.models` is a [`node_flow.LogPolar`][] of the states (leading time axis):
    `.log_singular_values()` gives $\ln\sigma_a$ exactly as integrated, `.det_sign()` the
    sign of $\det z$, `.orthogonality_drift()` $\|Q^\top Q - I\|_2$. `.evaluate(t)` (with
    `dense=True`) returns $z(t)$.
    """
    fname = "log_polar_flow"
    check_real(f"{fname}: z0", z0)
    z0 = jnp.asarray(z0)
    if not jnp.issubdtype(z0.dtype, jnp.floating):
        raise TypeError(f"{fname}: `z0` must be a real floating matrix; got {z0.dtype}.")
    if z0.ndim != 2 or z0.shape[0] != z0.shape[1]:
        raise ValueError(
            f"{fname}: `z0` must be a square matrix (the balanced kernel of THEORY §2 with "
            f"square widths); got shape {z0.shape}."
        )
    check_finite(f"{fname}: z0", z0)
    depth = _check_depth(fname, depth)
    options, ts, t0, t1, scale = flow_options(fname, locals())
    check_scalar_loss(fname, loss, jax.ShapeDtypeStruct(z0.shape, z0.dtype))
    _check_full_rank(fname, z0)
    start = LogPolar.from_matrix(z0)
    y0 = jnp.concatenate([start.Q.ravel(), start.S.ravel()])
    raw, states, to_matrix = _log_polar_core(y0, loss, depth, event, scale, t0, t1, ts, options)
    return finish(fname, raw, states, to_matrix, t0, t1, throw)
