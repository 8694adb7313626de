"""`crossing_time` on the dense output (issue 13), against the two-layer closed form."""

import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf


@pytest.mark.parametrize("s, z0, zf", [(2.0, 0.05, 1.0), (1.0, 0.01, 0.9), (3.0, 0.5, 2.5)])
def test_crossing_time_matches_the_two_layer_closed_form(s, z0, zf):
    """Balanced scalar two-layer mode (REFERENCES: X = √n I, Y = √n·target, n = 1):
    z(t) = s e^{2st}/(e^{2st} − 1 + s/z0), so z = zf at t = ln(zf(s − z0)/(z0(s − zf)))/(2s).
    Solved at rtol = atol = 1e-12; the crossing is root-found to 1e-12, so 1e-7 relative
    leaves room for the interpolant's error divided by the slope of z."""
    a = np.sqrt(z0)
    net = nf.LinearNetwork((jnp.array([[a]]), jnp.array([[a]])))
    loss = nf.LeastSquares(jnp.eye(1), s * jnp.eye(1))
    t_exact = np.log(zf * (s - z0) / (z0 * (s - zf))) / (2 * s)
    t1 = 2 * t_exact
    sol = nf.gradient_flow(net, loss, t1, rtol=1e-12, atol=1e-12, dense=True, max_steps=4096)
    t, crossed = nf.crossing_time(sol, lambda z: z[0, 0], zf, full_output=True)
    assert bool(crossed) and abs(float(t) - t_exact) <= 1e-7 * t_exact
    never = nf.crossing_time(sol, lambda z: z[0, 0], 2 * s)
    assert bool(jnp.isnan(never))
    e = np.exp(2 * s * 0.3 * t_exact)
    z_mid = s * e / (e - 1 + s / z0)
    assert abs(float(sol.evaluate(0.3 * t_exact)[0, 0]) - z_mid) <= 1e-8 * z_mid


def test_evaluate_without_dense_output_is_a_clear_error():
    net = nf.LinearNetwork((jnp.array([[0.5]]),))
    sol = nf.gradient_flow(net, lambda z: jnp.sum(z**2), 1.0)
    with pytest.raises(ValueError, match="dense=True"):
        sol.evaluate(0.5)
    with pytest.raises(ValueError, match="dense=True"):
        nf.crossing_time(sol, lambda z: z[0, 0], 0.1)
