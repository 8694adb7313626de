"""Headline claims for two-layer and deep linear networks (REFERENCES, THEORY §2–3), each against
an independent computation: the depth limit of the kernel, the rectangular two-layer intrinsic
dynamics, the imbalanced scalar mode, the exact Riccati solution, and a rectangular point where z
does not determine M.

Conventions (REFERENCES): whitened inputs, `LeastSquares(X, Y)` with `X = √n I`, `Y = √n Y*`, so
that ℓ(W) = ½‖W − Y*‖²; `W = U Vᵀ` with U the output factor, i.e. `LinearNetwork((Vᵀ, U))`, and
`C = UᵀU − VᵀV = λ I` (THEORY's `C_1 = U_2ᵀU_2 − U_1U_1ᵀ`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import node_flow as nf
import node_flow.criterion as criterion
from node_flow.criterion import liftings

from .criterion_helpers import orthogonal
from .helpers import fit_slope, neural_ode_kernel_quadrature, rel_err


def _psd_sqrt(A):
    w, E = np.linalg.eigh(0.5 * (A + A.T))
    return (E * np.sqrt(np.clip(w, 0.0, None))) @ E.T


def _relaxed_two_layer(rng, n_in, h, n_out, lam, rank=None):
    """`(V, U)` with `UᵀU − VᵀV = λ I`: for λ ≥ 0, V free (rank `rank`) and
    `U = Q (VᵀV + λI)^½` (Q with orthonormal columns); for λ < 0, U free and
    `V = Q (UᵀU − λI)^½`."""
    if lam >= 0:
        V = rng.standard_normal((n_in, h))
        if rank is not None:
            V = V[:, :rank] @ rng.standard_normal((rank, h))
        U = orthogonal(rng, n_out)[:, :h] @ _psd_sqrt(V.T @ V + lam * np.eye(h))
    else:
        U = rng.standard_normal((n_out, h))
        V = orthogonal(rng, n_in)[:, :h] @ _psd_sqrt(U.T @ U - lam * np.eye(h))
    return V, U


def _whitened_loss(target):
    n_in = target.shape[1]
    return nf.LeastSquares(np.sqrt(n_in) * np.eye(n_in), np.sqrt(n_in) * target)


def _two_layer_kernel(lam):
    """REFERENCES: K(W)[G] = U Uᵀ G + G V Vᵀ with U Uᵀ = (λI + (λ²I + 4WWᵀ)^½)/2,
    V Vᵀ = (−λI + (λ²I + 4WᵀW)^½)/2 (eigh square roots, written here, not node_flow's)."""

    def sqrt_psd(A):
        # eigenvalues at rounding level (ker W when λ = 0) are zeroed: √ is not Lipschitz at 0
        w, E = jnp.linalg.eigh(0.5 * (A + A.T))
        w = jnp.where(w > 1e-13 * jnp.max(w), w, 0.0)
        return (E * jnp.sqrt(w)) @ E.T

    def kernel(W, G):
        n_out, n_in = W.shape
        UU = 0.5 * (lam * jnp.eye(n_out) + sqrt_psd(lam**2 * jnp.eye(n_out) + 4 * W @ W.T))
        VV = 0.5 * (-lam * jnp.eye(n_in) + sqrt_psd(lam**2 * jnp.eye(n_in) + 4 * W.T @ W))
        return UU @ G + G @ VV

    return kernel


def _riccati(V0, U0, target, lam, ts):
    """REFERENCES (exact): P(t) = e^{At} R0 (I + R0ᵀ K(t) R0)^{-1} R0ᵀ e^{At}, R = [U; V],
    A = [[λ/2 I, Y*], [Y*ᵀ, −λ/2 I]], K(t) = ∫_0^t e^{2As} ds (A symmetric: by eigh);
    W(t) is the off-diagonal block P_12."""
    n_out, n_in = target.shape
    A = np.block([[lam / 2 * np.eye(n_out), target], [target.T, -lam / 2 * np.eye(n_in)]])
    w, Q = np.linalg.eigh(A)
    R0 = np.concatenate([U0, V0])
    out = []
    for t in ts:
        eAt = (Q * np.exp(w * t)) @ Q.T
        k = np.where(np.abs(w) > 1e-12, np.expm1(2 * w * t) / np.where(w == 0, 1, 2 * w), t)
        K = (Q * k) @ Q.T
        inner = np.linalg.inv(np.eye(R0.shape[1]) + R0.T @ K @ R0)
        P = eAt @ R0 @ inner @ R0.T @ eAt
        out.append(P[:n_out, n_out:])
    return np.stack(out)


# (n_in, n_hidden, n_out, λ): REFERENCES' intrinsic rectangular cases, z of full rank (a
# rank-deficient z makes the intrinsic ODE unstable off the range of z: errors at the solver
# tolerance grow like e^{ct} there, a property of the dynamics, not of the kernel)
_RECTANGULAR = {
    "λ=0, 3-3-4": (3, 3, 4, 0.0),
    "λ>0, n_out=n_hidden, 4-2-2": (4, 2, 2, 0.6),
    "λ<0, n_in=n_hidden, 2-2-3": (2, 2, 3, -0.6),
}
_TS = np.linspace(0.0, 2.0, 5)


@pytest.fixture(scope="module")
def rectangular_flows():
    """The parameter flow (nf.gradient_flow on a LinearNetwork) of each rectangular case."""
    flows = {}
    for i, (name, (n_in, h, n_out, lam)) in enumerate(_RECTANGULAR.items()):
        rng = np.random.default_rng(40 + i)
        V, U = _relaxed_two_layer(rng, n_in, h, n_out, lam)
        target = rng.standard_normal((n_out, n_in))
        loss = _whitened_loss(target)
        sol = nf.gradient_flow(nf.LinearNetwork((V.T, U)), loss, _TS[-1], ts=_TS)
        flows[name] = (V, U, target, lam, loss, np.asarray(sol.zs))
    return flows


@pytest.mark.parametrize("case", _RECTANGULAR)
def test_rectangular_two_layer_intrinsic_flow_equals_parameter_flow(rectangular_flows, case):
    """The closed-form kernel of REFERENCES drives z exactly like the parameter flow in the three
    cases where it is intrinsic. Both solves are controlled at rtol = atol = 1e-8 over t ≤ 2
    (global errors ~1e-8), so 1e-6."""
    V, U, target, lam, loss, zs = rectangular_flows[case]
    sol = nf.intrinsic_flow(U @ V.T, loss, _two_layer_kernel(lam), _TS[-1], ts=_TS)
    assert np.max(np.abs(np.asarray(sol.zs) - zs)) <= 1e-6
    assert np.max(np.abs(zs[-1] - zs[0])) > 0.1  # the flow moved


@pytest.mark.parametrize("case", _RECTANGULAR)
def test_parameter_flow_equals_exact_riccati_solution(rectangular_flows, case):
    """The exact Riccati solution of REFERENCES (closed form, numpy) against the parameter flow,
    same 1e-6 budget (the closed form is exact to rounding)."""
    V, U, target, lam, _, zs = rectangular_flows[case]
    assert np.allclose(U.T @ U - V.T @ V, lam * np.eye(U.shape[1]), atol=1e-12)
    assert np.max(np.abs(_riccati(V, U, target, lam, _TS) - zs)) <= 1e-6


@pytest.mark.parametrize("lam", [0.8, -0.5])
def test_imbalanced_scalar_modes_follow_the_closed_form_ode(lam):
    """Aligned modes of a 2-2-2 network: `U = X diag(a) Rᵀ`, `V = Y diag(b) Rᵀ`, `a² − b² = λ`,
    target `X diag(s) Yᵀ`; each σ_k = a_k b_k obeys σ' = (λ² + 4σ²)^½ (s − σ) (REFERENCES),
    solved here by scipy's LSODA at rtol 1e-12 (independent of diffrax). Budget 1e-6: the
    parameter flow is controlled at 1e-8."""
    rng = np.random.default_rng(7)
    X, Y, R = orthogonal(rng, 2), orthogonal(rng, 2), orthogonal(rng, 2)
    s, sigma0 = np.array([2.0, 0.7]), np.array([0.05, 0.3])
    # a² − b² = λ, a b = σ0  ⇒  a² = (λ + (λ² + 4σ0²)^½)/2
    a = np.sqrt((lam + np.sqrt(lam**2 + 4 * sigma0**2)) / 2)
    b = sigma0 / a
    U, V = X @ np.diag(a) @ R.T, Y @ np.diag(b) @ R.T
    loss = _whitened_loss(X @ np.diag(s) @ Y.T)
    ts = np.linspace(0.0, 3.0, 7)
    zs = np.asarray(nf.gradient_flow(nf.LinearNetwork((V.T, U)), loss, ts[-1], ts=ts).zs)
    modes = np.einsum("ik,tij,jk->tk", X, zs, Y)  # diag(Xᵀ z Y)
    rhs = lambda t, sig: np.sqrt(lam**2 + 4 * sig**2) * (s - sig)
    ref = scipy.integrate.solve_ivp(rhs, (0, ts[-1]), sigma0, t_eval=ts, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(modes - ref.y.T)) <= 1e-6
    off_diagonal = np.einsum("ik,tij,jl->tkl", X, zs, Y) * (1 - np.eye(2))
    assert np.max(np.abs(off_diagonal)) <= 1e-8  # the modes stay decoupled


def test_rank_deficient_rectangular_point_where_z_does_not_determine_M_fails_the_criterion():
    """3-2-3, λ = 0.5 > 0 with n_out > n_hidden and rank-one z (REFERENCES: the eigenvalue of
    UUᵀ off the range of z is ambiguous). Independent witness: rotating U's column that is not
    seen by z gives θ' with the same z and the same C = λI but a different UUᵀ, hence a
    different M = UUᵀ ⊗ I + I ⊗ VVᵀ. The criterion says "fails" there."""
    rng = np.random.default_rng(3)
    V, U = _relaxed_two_layer(rng, 3, 2, 3, 0.5, rank=1)
    # hidden basis where V's second direction is null: V e2 = 0
    _, _, Wt = np.linalg.svd(V)
    e1, e2 = Wt
    u_free = U @ e2  # U's image of V's null direction: not seen by z = U Vᵀ
    u_seen = U @ e1
    # rotate u_free about u_seen: keeps lengths and angles, so UᵀU and C
    rot = scipy.linalg.expm(0.7 * np.cross(np.eye(3), u_seen / np.linalg.norm(u_seen)))
    U2 = U + np.outer(rot @ u_free - u_free, e2)
    assert np.linalg.norm(np.cross(u_seen, u_free)) > 0.1  # not parallel: UUᵀ will move
    np.testing.assert_allclose(U2 @ V.T, U @ V.T, atol=1e-12)  # same z
    np.testing.assert_allclose(U2.T @ U2 - V.T @ V, 0.5 * np.eye(2), atol=1e-12)  # same C
    assert np.max(np.abs(U2 @ U2.T - U @ U.T)) > 0.1  # different M
    report = criterion.kernel_inclusion(
        liftings.deep_linear((3, 2, 3)), (jax.device_put(V.T), jax.device_put(U))
    )
    assert report.holds is False and report.residual >= 1e-3, report.reason


def test_relaxed_kernel_over_depth_converges_to_neural_ode_kernel_at_first_order():
    """λ-independence at kernel level (THEORY §3): with λ_j = λ(j/L)/L², λ(s) = 1.5 + cos 3s
    (∫λ ≠ 0), (1/L) K_L(z)[G] → K_∞(z)[G] (quadrature oracle), error ∝ 1/L: fitted log–log
    slope −1 ± 0.1 over L = 8…64, for this profile and for λ ≡ 0."""
    rng = np.random.default_rng(11)
    z = jnp.asarray(orthogonal(rng, 3) @ np.diag([2.0, 1.0, 0.4]) @ orthogonal(rng, 3).T)
    G = jnp.asarray(rng.standard_normal((3, 3)))
    limit = neural_ode_kernel_quadrature(z, G)
    depths = [8, 16, 32, 64]
    for profile in (lambda s: 1.5 + np.cos(3 * s), lambda s: 0.0 * s):
        errs = []
        for L in depths:
            lam = profile(np.arange(1, L) / L) / L**2
            errs.append(rel_err(nf.kernels.relaxed_balanced(z, G, jnp.asarray(lam)) / L, limit))
        slope, _ = fit_slope(depths, errs)
        assert abs(slope + 1) <= 0.1, (slope, errs)
