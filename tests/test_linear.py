"""Deep linear networks, their conservation laws and initializations (THEORY §2)."""

import functools as ft
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import node_flow as nf
import node_flow.init._common as init_common

from .helpers import max_abs


KEY = jax.random.key(0)


@pytest.mark.parametrize("depth", [1, 2, 3, 7, 16, 33])
def test_lift_is_the_ordered_product(depth):
    """The log-depth product equals the sequential product U_L ⋯ U_1 (rounding only)."""
    net = nf.init.gaussian(jax.random.key(depth), (4,) * (depth + 1))
    expected = ft.reduce(lambda z, U: U @ z, net.weights)
    assert max_abs(net.lift() - expected) <= 1e-13 * (1 + max_abs(expected))


def test_lift_rectangular_and_attributes():
    net = nf.init.gaussian(KEY, (5, 3, 4, 2))
    assert net.depth == 3 and net.widths == (5, 3, 4, 2)
    U1, U2, U3 = net.weights
    assert net.lift().shape == (2, 5)
    assert max_abs(net.lift() - U3 @ U2 @ U1) < 1e-14


def test_conservation_laws_match_definition():
    net = nf.init.gaussian(KEY, (3, 4, 2))
    (C,) = nf.conservation_laws(net)
    U1, U2 = net.weights
    assert C.shape == (4, 4)
    assert max_abs(C - (U2.T @ U2 - U1 @ U1.T)) == 0.0


@pytest.mark.parametrize("widths", [(3, 3), (4, 4, 4), (2, 5, 3, 6), (6, 2, 2, 5, 1)])
def test_balanced_init_is_exactly_balanced(widths):
    net = nf.init.balanced(KEY, widths, scale=1.3)
    for C in nf.conservation_laws(net):
        assert max_abs(C) <= 1e-14 * 10


def test_frames_from_one_batched_qr_equal_separate_factorizations():
    """The zero-padded batch gives each frame of a separate QR (to rounding), Haar-signed
    (positive diagonal of R) and orthonormal, at every height."""
    keys = list(jax.random.split(KEY, 4))
    rows, cols = (3, 7, 5, 3), 3
    frames = init_common.orthonormal_frames(keys, rows, cols, jnp.float64)
    for key, n, V in zip(keys, rows, frames):
        Q, R = np.linalg.qr(np.asarray(jax.random.normal(key, (n, cols), jnp.float64)))
        expected = Q * np.sign(np.diag(R))
        assert V.shape == (n, cols)
        # entries O(1), rounding of one Householder QR of a ≤ 7 × 3 matrix: ≤ 1e-14
        assert max_abs(V - expected) <= 1e-14
        assert max_abs(V.T @ V - np.eye(cols)) <= 1e-14


_SWEPT_INIT = """
import jax
jax.config.update("jax_enable_x64", True)
import node_flow as nf
keys = jax.random.split(jax.random.key(0), 16)
nets = jax.jit(jax.vmap(lambda k: nf.init.balanced(k, (100, 100, 100), 1e-2)))(keys)
U1, U2 = nets.weights
gap = jax.numpy.abs(jax.numpy.swapaxes(U2, 1, 2) @ U2 - U1 @ jax.numpy.swapaxes(U1, 1, 2))
print(float(gap.max()))
"""


def test_balanced_init_swept_over_keys_returns():
    """`vmap` over 16 keys of a width-100, depth-2 `balanced` network: three frames per
    network. As three separate QR kernels, jaxlib 0.10 ran them concurrently on 2 CPUs and
    deadlocked (the process slept forever); one batched QR returns in about a second. In a
    subprocess with a timeout, so a hang fails the test instead of stalling the suite. The
    networks must still be balanced: entries O(scale²) = 1e-4, rounding ≤ 1e-18."""
    proc = subprocess.run(
        [sys.executable, "-c", _SWEPT_INIT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) <= 1e-18


@pytest.mark.parametrize("depth", [2, 3, 5, 8])
@pytest.mark.parametrize("n", [1, 3, 6])
def test_relaxed_balanced_init_square_any_depth(depth, n):
    """C_j = λ_j I to float64 rounding, for mixed-sign λ (even strongly negative sums)."""
    lam = jax.random.uniform(jax.random.key(depth * n), (depth - 1,), minval=-1.0, maxval=1.0)
    net = nf.init.relaxed_balanced(KEY, (n,) * (depth + 1), lam)
    for C, l in zip(nf.conservation_laws(net), lam):
        # entries are O(|U|²) ≲ 10; rounding of a few products: ≤ 1e-13
        assert max_abs(C - l * jnp.eye(n)) <= 1e-13


@pytest.mark.parametrize(
    "widths, lam", [((2, 3, 5), 0.7), ((5, 3, 2), -0.4), ((4, 2, 3), 0.3), ((4, 2, 3), -1.2)]
)
def test_relaxed_balanced_init_two_layer_rectangular(widths, lam):
    net = nf.init.relaxed_balanced(KEY, widths, [lam])
    (C,) = nf.conservation_laws(net)
    assert max_abs(C - lam * jnp.eye(widths[1])) <= 1e-13


def test_relaxed_balanced_infeasible_rectangular_names_the_condition():
    with pytest.raises(ValueError, match=r"output width n_2 = 2 ≥ the hidden width n_1 = 3"):
        nf.init.relaxed_balanced(KEY, (4, 3, 2), [0.5])
    with pytest.raises(ValueError, match=r"input width n_0 = 2 ≥ the hidden width n_1 = 3"):
        nf.init.relaxed_balanced(KEY, (2, 3, 4), [-0.5])
    with pytest.raises(ValueError, match="unsupported configuration"):
        nf.init.relaxed_balanced(KEY, (2, 3, 3, 2), [0.5, 0.1])
    with pytest.raises(ValueError, match="one λ_j per conservation law"):
        nf.init.relaxed_balanced(KEY, (3, 3, 3, 3), [0.5])
    with pytest.raises(ValueError, match="finite"):
        nf.init.relaxed_balanced(KEY, (3, 3, 3, 3), [0.5, np.nan])


def test_linear_network_bad_input_messages():
    with pytest.raises(ValueError, match="mismatched widths: U_1 has 3 rows but U_2 has 4"):
        nf.LinearNetwork((jnp.ones((3, 2)), jnp.ones((5, 4))))
    with pytest.raises(ValueError, match="non-finite"):
        nf.LinearNetwork((jnp.ones((2, 2)), jnp.full((2, 2), jnp.nan)))
    with pytest.raises(ValueError, match="must be a matrix"):
        nf.LinearNetwork((jnp.ones((2, 2, 2)),))
    with pytest.raises(TypeError, match="non-empty tuple"):
        nf.LinearNetwork(())
    with pytest.raises(TypeError, match="floating dtype"):
        nf.LinearNetwork((jnp.ones((2, 2), dtype=jnp.int32),))
    with pytest.raises(ValueError, match="at least two positive ints"):
        nf.init.gaussian(KEY, (3,))


def test_least_squares_value_gradient_and_shape_check():
    X = jax.random.normal(jax.random.key(1), (3, 7))
    Y = jax.random.normal(jax.random.key(2), (2, 7))
    loss = nf.LeastSquares(X, Y)
    z = jax.random.normal(jax.random.key(3), (2, 3))
    assert abs(float(loss(z)) - float(np.sum((z @ X - Y) ** 2) / 14)) < 1e-13
    assert max_abs(jax.grad(loss)(z) - (z @ X - Y) @ X.T / 7) < 1e-13
    with pytest.raises(ValueError, match="z must have shape"):
        loss(jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="same number of columns"):
        nf.LeastSquares(jnp.ones((3, 4)), jnp.ones((2, 5)))


def test_lift_and_conservation_laws_broadcast_over_leading_axes():
    """`FlowSolution.models` carries a time axis: lift and C_j act per time slice."""
    nets = [nf.init.gaussian(jax.random.key(i), (3, 2, 4, 3)) for i in range(3)]
    batched = jax.tree.map(lambda *x: jnp.stack(x), *nets)
    for i, net in enumerate(nets):
        assert max_abs(batched.lift()[i] - net.lift()) <= 1e-14
        for a, b in zip(nf.conservation_laws(batched), nf.conservation_laws(net)):
            assert max_abs(a[i] - b) <= 1e-14
    res = [
        nf.ResidualLinearNetwork(jax.random.normal(jax.random.key(i), (5, 3, 3))) for i in range(2)
    ]
    batched = jax.tree.map(lambda *x: jnp.stack(x), *res)
    assert batched.depth == 5
    for i, net in enumerate(res):
        assert max_abs(batched.lift()[i] - net.lift()) <= 1e-13
        assert max_abs(nf.conservation_laws(batched)[i] - nf.conservation_laws(net)) <= 1e-13


def _sequential_product_and_gradients(mats, G):
    """z = M_L ⋯ M_1 and ∂⟨G, z⟩/∂M_k = (M_L ⋯ M_{k+1})ᵀ G (M_{k-1} ⋯ M_1)ᵀ by explicit
    prefix and suffix products in NumPy (no autodiff, no tree)."""
    mats, G = np.asarray(mats), np.asarray(G)
    L, n = mats.shape[0], mats.shape[-1]
    prefix = [np.eye(n)]
    for M in mats:
        prefix.append(M @ prefix[-1])
    suffix = [np.eye(n)]
    for M in mats[::-1]:
        suffix.append(suffix[-1] @ M)
    grads = [suffix[L - 1 - k].T @ G @ prefix[k].T for k in range(L)]
    return prefix[-1], np.stack(grads)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8, 13, 64, 100])
@pytest.mark.parametrize("n", [1, 3, 8, 16, 20])
def test_fused_reverse_pass_matches_prefix_suffix_gradient(depth, n):
    """`chain_product_reverse` (bit-reversed tree, fused unrolled products for n ≤ 16,
    `dot` above): value and `jax.grad` against the sequential prefix/suffix formula.
    Products of ≤ 100 near-identity factors: rounding grows like depth·n·ε, so 1e-12."""
    from node_flow._chain import chain_product_reverse

    rng = np.random.default_rng(depth * 100 + n)
    mats = np.eye(n) + rng.standard_normal((depth, n, n)) / np.sqrt(n * depth)
    G = rng.standard_normal((n, n))
    z, grads = _sequential_product_and_gradients(mats, G)
    value, grad = jax.value_and_grad(lambda m: jnp.sum(chain_product_reverse(m) * G))(
        jnp.asarray(mats)
    )
    assert max_abs(chain_product_reverse(jnp.asarray(mats)) - z) <= 1e-12 * (1 + max_abs(z))
    assert max_abs(grad - grads) <= 1e-12 * (1 + max_abs(grads))
    assert abs(float(value) - float(np.sum(z * G))) <= 1e-12 * (1 + abs(float(np.sum(z * G))))


def test_fused_reverse_pass_batches_and_float32():
    """Extra batch axes after the depth axis broadcast (vmap-free), and float32 works
    (tolerance: 1e-5, a few hundred float32 roundings on O(1) entries)."""
    from node_flow._chain import chain_product, chain_product_reverse

    rng = np.random.default_rng(0)
    mats = jnp.asarray(np.eye(4) + 0.2 * rng.standard_normal((11, 3, 4, 4)))
    G = jnp.asarray(rng.standard_normal((3, 4, 4)))
    for dtype, tol in ((jnp.float64, 1e-13), (jnp.float32, 1e-5)):
        m, g = mats.astype(dtype), G.astype(dtype)
        ref = jax.grad(lambda m: jnp.sum(chain_product(m) * g))(m)
        got = jax.grad(lambda m: jnp.sum(chain_product_reverse(m) * g))(m)
        assert got.dtype == dtype
        assert max_abs(got - ref) <= tol * (1 + max_abs(ref))


@pytest.mark.parametrize("make", ["linear", "residual"])
def test_reverse_mode_twin_has_the_same_lift_and_gradient(make):
    """`reverse_mode()` changes how the gradient is computed, not what it is; the twin
    refuses `jax.jvp` (a custom VJP), while the model itself keeps forward mode."""
    if make == "linear":
        net = nf.init.gaussian(jax.random.key(3), (5,) * 10)
        params = net.weights
        rebuild = lambda p, **kw: nf.LinearNetwork(p, **kw)
    else:
        net = nf.ResidualLinearNetwork(jax.random.normal(jax.random.key(3), (9, 5, 5)))
        params = net.A
        rebuild = lambda p, **kw: nf.ResidualLinearNetwork(p, **kw)
    twin = net.reverse_mode()
    assert twin.reverse_only and not net.reverse_only
    assert max_abs(twin.lift() - net.lift()) <= 1e-13
    G = jax.random.normal(jax.random.key(4), (5, 5))
    f = lambda p, **kw: jnp.sum(rebuild(p, **kw).lift() * G)
    ref, got = jax.grad(f)(params), jax.grad(ft.partial(f, reverse_only=True))(params)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        assert max_abs(a - b) <= 1e-12 * (1 + max_abs(a))
    jax.jvp(f, (params,), (params,))  # forward mode through the plain model
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(ft.partial(f, reverse_only=True), (params,), (params,))
    rect = nf.init.gaussian(jax.random.key(5), (3, 4, 2))
    assert rect.reverse_mode() is rect  # unequal widths: no stacked product, no twin
