"""The headline claim in `make test` (THEORY §3, claim 4; README "The depth limit, measured"):
the parameter flow of the depth-L exactly relaxed balanced residual network converges to the
continuum intrinsic flow of `kernels.neural_ode` at first order in 1/L, whatever the
imbalance profile λ(s). A small version of `experiments/depth_limit.py`: n = 2, L = 8…64."""

import jax
import jax.numpy as jnp

import node_flow as nf

from .helpers import fit_slope


N = 2
DEPTHS = (8, 16, 32, 64)
T = 2.0
TS = jnp.linspace(0.0, T, 5)
# Solver tolerance 1e-10: the smallest error measured (L = 64) is ~4e-3, so solver errors
# (≲ 1e-8 over [0, T]) cannot move the fitted slopes.
TOL = dict(rtol=1e-10, atol=1e-10)
# ±0.1 on a first-order slope fitted on L = 8…64: the O(1/L²) corrections measured at these
# depths move it by ≤ 0.06 (λ ≡ 1: −0.96 for the error, −0.94 for the displacement).
SLOPE_TOL = 0.1


def _loss():
    kx, ky = jax.random.split(jax.random.key(3))
    return nf.LeastSquares(
        jax.random.normal(kx, (N, 2 * N)) / (2 * N) ** 0.5, jax.random.normal(ky, (N, 2 * N))
    )


def test_depth_L_parameter_flow_converges_to_the_neural_ode_kernel_flow_at_first_order():
    """For λ ≡ 0 and λ ≡ 1 (∫λ = 1 ≠ 0): max_t |z_L(t) − z_∞(t)|_F against L has fitted
    log–log slope −1 ± 0.1; so has the error of the displacement z(t) − z(0), which removes
    the initial mismatch z_L(0) − z0 = O(1/L) (zero for λ ≡ 0) and leaves the flows'.

    z_L: `gradient_flow` of the depth-L network of `neural_ode.relaxed_balanced_residual`
    (metric (1/L)Σ|A_k|², C_k = λ/L² I), a flow of L·n² parameters. z_∞: `intrinsic_flow`
    of the continuum kernel `kernels.neural_ode` (spectral closed form) from the exact
    z0 = e^K e^{S0}, `same_z0` keeping it the same for both profiles: an independent
    computation in n² = 4 variables. One compilation per depth, shared by both profiles."""
    loss = _loss()
    profiles = {
        lam: nf.neural_ode.relaxed_balanced_weights(jax.random.key(0), N, lam, same_z0=True)
        for lam in (0.0, 1.0)
    }
    z0 = profiles[0.0].z0()
    assert float(jnp.max(jnp.abs(profiles[1.0].z0() - z0))) <= 1e-13
    limit = nf.intrinsic_flow(z0, loss, nf.kernels.neural_ode, T, ts=TS, **TOL).zs
    norm = lambda d: float(jnp.max(jnp.linalg.norm(d, axis=(-2, -1))))
    for lam, weights in profiles.items():
        errors, displacement = [], []
        for L in DEPTHS:
            zs = nf.gradient_flow(weights.residual(L), loss, T, ts=TS, **TOL).zs
            errors.append(norm(zs - limit))
            displacement.append(norm((zs - zs[0]) - (limit - limit[0])))
        for name, errs in (("error", errors), ("displacement", displacement)):
            slope, _ = fit_slope(DEPTHS, errs)
            assert abs(slope + 1) <= SLOPE_TOL, (lam, name, slope, errs)
        # it trained: the limit moves by O(1), far more than the errors at L = 64
        assert norm(limit[-1] - limit[0]) > 10 * errors[-1]
