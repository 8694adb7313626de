"""ReLU networks on DAGs (THEORY §4): path-lifting, M(θ), conservation laws, recovery of θ²
from (z, h0), and the intrinsic flow on intervals of fixed activation pattern.

Every claim is checked against an independent computation: the network's own forward pass,
the explicit product of weight entries, jax autodiff (`node_flow.metric`, `jax.jacfwd`), the
two-layer closed form, the true weights of a network, and a direct diffrax solve of the ReLU
gradient flow through the forward pass.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import node_flow
import node_flow.relu as relu


# -- the zoo: generic (unbalanced) ReLU networks, tiny ---------------------------------

# Layer scales differ so that h(θ0) ≠ 0 (unbalanced) and differs between neurons.
_SCALES = (1.3, 0.6, 0.9)


def _mlp(key, widths, bias=True):
    keys = jr.split(key, 2 * len(widths))
    weights = [
        _SCALES[j] * jr.normal(keys[j], (widths[j + 1], widths[j])) for j in range(len(widths) - 1)
    ]
    biases = [
        0.5 * jr.normal(keys[len(widths) + j], (widths[j + 1],)) for j in range(len(widths) - 1)
    ]
    return relu.MLP(weights, biases if bias else None)


# Inputs 0, 1; constant (bias) 2; hidden 3, 4 (first layer), 5 (second); outputs 6, 7.
# Skip connections: 1 → 5 (input to second layer), 3 → 6 and 4 → 7 (first layer to
# output), 0 → 6 (input to output). Every hidden neuron has at least two in- and two
# out-edges (see `_data`).
_DAG_EDGES = (
    (0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4),
    (3, 5), (4, 5), (1, 5), (2, 5), (5, 6), (5, 7), (3, 6), (4, 7), (0, 6),
)  # fmt: skip


def _dag(key):
    scales = jnp.asarray([1.3] * 6 + [0.6] * 4 + [0.9] * 5)
    w = jr.normal(key, (len(_DAG_EDGES),)) * scales
    return relu.DAGNetwork(_DAG_EDGES, w, inputs=(0, 1), outputs=(6, 7), constants=(2,))


def _data(key, n=8):
    # Two outputs on purpose: with a single output, a last-layer neuron has a single
    # out-weight, which generically crosses zero during training; at that instant all its
    # paths vanish, z does not determine θ², and the intrinsic flow in z is ill-conditioned
    # near it (errors grow like solver-noise / |θ_e|). With two out-weights that crossing
    # has codimension two and does not happen generically.
    X = jr.normal(key, (n, 2))
    Y = jnp.stack([jnp.sin(2 * X[:, 0]) + 0.5 * X[:, 1], jnp.cos(X[:, 0]) * X[:, 1]], axis=1)
    return X, Y


NETS = {
    "mlp2": lambda: _mlp(jr.key(1), (2, 3, 2)),
    "mlp3": lambda: _mlp(jr.key(2), (2, 3, 3, 2)),
    "dag": lambda: _dag(jr.key(3)),
}
T1 = 2.0
# Flows in the tests run at rtol = atol = 1e-11 so that conservation laws drift by
# ~1e-10 at most, which keeps M(θ(t)) − K(z(t), h(θ0)) below the 1e-9 acceptance level.
TOL = 1e-11


@pytest.fixture(scope="module")
def trained():
    """The piecewise training of each zoo network (compiled once per architecture)."""
    X, Y = _data(jr.key(2))  # a dataset on which every zoo network changes pattern
    out = {}
    for name, make in NETS.items():
        net = make()
        out[name] = (net, X, Y, relu.train(net, X, Y, T1, saves=6, rtol=TOL, atol=TOL))
    return out


def _flat(models):
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), models)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# -- the path-lifting --------------------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_forward_pass_equals_path_lifting_formula(name):
    # On each input, f(x) = Σ_p z_p [p active on x] x_in(p), with the pattern read off
    # the network itself: the sum of path products against the layered/DAG forward pass.
    net = NETS[name]()
    X, Y = _data(jr.key(5), n=16)
    loss = relu.pattern_loss(net, X, Y)
    assert jnp.allclose(loss.predict(net.lift()), jax.vmap(net)(X), rtol=1e-13, atol=1e-13)
    assert jnp.allclose(loss(net.lift()), relu.network_loss(net, X, Y), rtol=1e-13)


def test_mlp_and_dag_forward_passes_agree_on_the_same_graph():
    # Two independent forward passes: layer by layer (MLP) and sweeps of the DAG.
    net = NETS["mlp3"]()
    dag = relu.DAGNetwork(net.arch, net.edge_weights())
    X, _ = _data(jr.key(6), n=16)
    assert jnp.allclose(jax.vmap(net)(X), jax.vmap(dag)(X), rtol=1e-13, atol=1e-13)
    assert jnp.array_equal(net.activation_pattern(X), dag.activation_pattern(X))
    assert jnp.array_equal(net.lift(), dag.lift())


def test_mlp_path_order_is_lexicographic_in_neuron_indices():
    # Documented order: data paths by (i0, i1, i2, i3), then the bias paths of layer 1
    # by (i1, i2, i3), layer 2, layer 3. Oracle: explicit products of matrix entries.
    net = NETS["mlp3"]()
    (U1, U2, U3), (b1, b2, b3) = net.weights, net.biases
    expected = jnp.concatenate(
        [
            jnp.einsum("ba,cb,dc->abcd", U1, U2, U3).ravel(),
            jnp.einsum("b,cb,dc->bcd", b1, U2, U3).ravel(),
            jnp.einsum("c,dc->cd", b2, U3).ravel(),
            b3,
        ]
    )
    assert jnp.allclose(net.lift(), expected, rtol=1e-14, atol=1e-15)
    # Without biases, summing z over hidden indices gives the linear network U3 U2 U1.
    linear = relu.MLP(net.weights)
    z = linear.lift().reshape(linear.widths)
    assert jnp.allclose(z.sum(axis=(1, 2)).T, U3 @ U2 @ U1, rtol=1e-13)


@pytest.mark.parametrize("name", NETS)
def test_metric_matrix_equals_autodiff_metric(name):
    # The explicit formula Σ_{e∈p∩q} z_p z_q / θ_e² against node_flow.metric (vjp then jvp).
    net = NETS[name]()
    M = relu.metric_matrix(net)
    d = net.lift().size
    M_ad = jax.vmap(lambda g: node_flow.metric(net, g))(jnp.eye(d))
    assert _rel(M, M_ad) < 1e-13
    # ... and the division form, literally, where no weight vanishes.
    theta, z, P = net.edge_weights(), net.lift(), jnp.asarray(net.arch.incidence)
    M_div = jnp.einsum("pe,qe,e->pq", P, P, 1 / theta**2) * jnp.outer(z, z)
    assert _rel(M, M_div) < 1e-13


def test_metric_matrix_is_defined_at_zero_weights():
    # With θ_e = 0 the division form is 0/0; the division-free formula must still be the
    # Jacobian product, here against jax.jacfwd of the path-lifting.
    net = NETS["dag"]()
    theta = net.edge_weights().at[jnp.asarray([0, 7])].set(0.0)
    net = net.with_edge_weights(theta)
    J = jax.jacfwd(lambda th: relu.path_products(th, net.arch))(theta)
    assert jnp.all(jnp.isfinite(relu.metric_matrix(net)))
    assert _rel(relu.metric_matrix(net), J @ J.T) < 1e-14


@pytest.mark.parametrize("name", NETS)
def test_conservation_law_gradients_are_orthogonal_to_the_lifting(name):
    # ∇h_v ⟂ ∇φ_p for every hidden v and path p (THEORY §1), by autodiff.
    net = NETS[name]()
    arch, theta = net.arch, net.edge_weights()
    J = jax.jacfwd(lambda th: relu.path_products(th, arch))(theta)
    Jh = jax.jacfwd(lambda th: relu.conservation_laws(net.with_edge_weights(th)))(theta)
    assert Jh.shape == (len(arch.hidden), arch.num_edges)
    assert float(jnp.max(jnp.abs(J @ Jh.T))) < 1e-13 * float(jnp.max(jnp.abs(J))) ** 2


# -- recovery of θ² from (z, h0), and K(z, h0) -------------------------------------------


def _rescaled(net, key):
    """A positive neuron rescaling of `net`: same z, different h."""
    arch = net.arch
    log_alpha = 0.7 * jr.normal(key, (len(arch.hidden),))
    D = jnp.asarray(arch.neuron_incidence)
    return net.with_edge_weights(net.edge_weights() * jnp.exp(D.T @ log_alpha))


@pytest.mark.parametrize("name", NETS)
def test_recover_squares_returns_the_weights_of_the_network(name):
    # The oracle is the network itself: θ² is the unique point of the fibre of z with
    # h = h(θ). A rescaled copy has the same z but other h and other θ².
    # Newton stops at |h - h0| ≤ 1e-12 × scale; θ² inherits that up to the conditioning
    # of the small Hessian, so 1e-10 relative.
    net = NETS[name]()
    for other in (net, _rescaled(net, jr.key(7))):
        assert jnp.allclose(other.lift(), net.lift(), rtol=1e-13)
        sq = relu.recover_squares(other.lift(), relu.conservation_laws(other), other.arch)
        assert _rel(sq, other.edge_weights() ** 2) < 1e-10
        K = relu.intrinsic_kernel(other.lift(), relu.conservation_laws(other), other.arch)
        assert _rel(K, relu.metric_matrix(other)) < 1e-10
    # h matters: the two networks share z but not M.
    assert _rel(relu.metric_matrix(_rescaled(net, jr.key(7))), relu.metric_matrix(net)) > 1e-2


def test_two_layer_closed_form_is_matched():
    # THEORY §4: ||u_j||² = (δ_j + (δ_j² + 4||z_j||²)^{1/2})/2 with δ_j = -h_j, against the
    # true weights and against Newton's recovery, on balanced-sign mixtures of δ.
    net = _mlp(jr.key(11), (3, 4, 2))
    for other in (net, _rescaled(net, jr.key(12))):
        z, h = other.lift(), relu.conservation_laws(other)
        closed = relu.two_layer_squares(z, h, other.arch)
        assert _rel(closed, other.edge_weights() ** 2) < 1e-13
        assert _rel(relu.recover_squares(z, h, other.arch), closed) < 1e-10
        U1, U2 = other.weights
        u_sq = jnp.sum(U2**2, axis=0)
        delta = u_sq - (jnp.sum(U1**2, axis=1) + other.biases[0] ** 2)
        assert jnp.allclose(delta, -h, rtol=1e-13)


def test_intrinsic_kernel_operator_equals_matrix():
    # The matrix-free IntrinsicKernel used by intrinsic_flow against the d×d matrix.
    net = NETS["mlp3"]()
    z, h0 = net.lift(), relu.conservation_laws(net)
    G = jr.normal(jr.key(4), z.shape)
    K = relu.intrinsic_kernel(z, h0, net.arch)
    assert jnp.allclose(relu.IntrinsicKernel(h0, net.arch)(z, G), K @ G, rtol=1e-12)


# -- training: parameter flow, intrinsic flow, pattern changes --------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_metric_equals_intrinsic_kernel_along_the_flow(trained, name):
    # Acceptance: M(θ(t)) = K(z(t), h(θ0)) to 1e-9 (relative) at every save time.
    net, X, Y, sol = trained[name]
    models = _flat(sol.models)
    zs = sol.zs.reshape(-1, sol.zs.shape[-1])

    @eqx.filter_jit
    def along(models, zs):
        Ms = jax.vmap(relu.metric_matrix)(models)
        Ks = jax.vmap(lambda z: relu.intrinsic_kernel(z, sol.h0, net.arch))(zs)
        return Ms, Ks, jax.vmap(relu.conservation_laws)(models)

    Ms, Ks, hs = along(models, zs)
    err = jnp.linalg.norm(Ms - Ks, axis=(1, 2)) / jnp.linalg.norm(Ms, axis=(1, 2))
    assert float(jnp.max(err)) < 1e-9
    # The conservation laws are constant along the flow (to the solver tolerance).
    assert float(jnp.max(jnp.abs(hs - sol.h0))) < 1e-9 * float(jnp.max(jnp.abs(sol.h0)))


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_parameter_and_intrinsic_flows_give_the_same_z(trained, name):
    # Acceptance: same z(t) to 1e-7 on the fixed-pattern intervals (both flows at
    # rtol = atol = 1e-11; the intrinsic one is continued across intervals from its own z).
    net, X, Y, sol = trained[name]
    assert sol.zs_intrinsic is not None
    err = jnp.max(jnp.abs(sol.zs - sol.zs_intrinsic)) / jnp.max(jnp.abs(sol.zs))
    assert float(err) < 1e-7
    assert float(sol.losses[-1, -1]) < float(sol.losses[0, 0])  # it trains


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_pattern_changes_are_located_at_pre_activation_zeros(trained, name):
    net, X, Y, sol = trained[name]
    K = sol.ts.shape[0]
    assert K >= 2, "the zoo is chosen so that every network changes pattern before T1"
    assert sol.stop_reason == "t1" and float(sol.boundaries[-1]) == T1
    for k in range(K):
        model_k = jax.tree.map(lambda x: x[k], sol.models)
        pats = jax.vmap(lambda m: m.activation_pattern(X))(model_k)
        # Strictly inside an interval the pattern is the one the loss was built from.
        assert jnp.array_equal(pats[1:-1], jnp.broadcast_to(sol.patterns[k], pats[1:-1].shape))
        if k + 1 < K:
            # At the switch time a pre-activation is zero (relative to the largest one), and
            # the next pattern differs from this one exactly there.
            end = jax.tree.map(lambda x: x[-1], model_k)
            pre = jax.vmap(end.pre_activations)(X)
            assert float(jnp.min(jnp.abs(pre)) / jnp.max(jnp.abs(pre))) < 1e-8
            flipped = sol.patterns[k] != sol.patterns[k + 1]
            assert 1 <= int(flipped.sum())
            assert float(jnp.max(jnp.where(flipped, jnp.abs(pre), 0.0))) < 1e-8


@pytest.mark.slow
def test_piecewise_training_matches_a_direct_relu_gradient_flow(trained):
    # Independent oracle: diffrax on θ' = -∇_θ L(θ) with L by the network's own forward
    # pass (autodiff through ReLU, no events, the adaptive solver steps over the kinks).
    # The kink costs the direct solve accuracy, hence 1e-6 instead of the tolerance.
    net, X, Y, sol = trained["mlp2"]
    theta0 = net.edge_weights()
    grad = jax.grad(lambda th: relu.network_loss(net.with_edge_weights(th), X, Y))
    direct = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, th, args: -grad(th)),
        diffrax.Tsit5(),
        0.0,
        T1,
        None,
        theta0,
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12, dtmin=1e-14),
        max_steps=100_000,
    )
    final = jax.tree.map(lambda x: x[-1, -1], sol.models).edge_weights()
    assert _rel(final, direct.ys[-1]) < 1e-6


def test_kernel_inclusion_criterion_holds_for_path_lifting():
    # The criterion is part of the package: imported, never skipped.
    criterion = node_flow.criterion
    for name in ("mlp3", "dag"):
        net = NETS[name]()
        arch = net.arch
        report = criterion.kernel_inclusion(
            lambda th: relu.path_products(th, arch),
            net.edge_weights(),
            conserved=lambda th: relu.conservation_laws(net.with_edge_weights(th)),
        )
        assert report.holds, (name, report.reason)
        assert report.residual < 1e-10


# -- bad inputs ----------------------------------------------------------------------------


def test_cycle_is_rejected():
    with pytest.raises(ValueError, match="cycle through neurons \\[2, 3\\]"):
        relu.Architecture([(0, 2), (2, 3), (3, 2), (3, 1)], inputs=[0], outputs=[1])


def test_neuron_without_path_is_rejected():
    # Hidden neuron 3 has an in-edge but no way to an output.
    with pytest.raises(ValueError, match=r"neuron\(s\) \[3\] lie on no input→output path"):
        relu.DAGNetwork([(0, 2), (2, 1), (0, 3)], jnp.ones(3), inputs=[0], outputs=[1])


@pytest.mark.parametrize(
    "edges, match",
    [
        ([(0, 1), (0, 1)], "repeated edge"),
        ([(0, 2), (2, 1), (1, 3)], "out of output"),
        ([(0, 0), (0, 1)], "self-loop"),
    ],
)
def test_malformed_graphs_are_rejected(edges, match):
    with pytest.raises(ValueError, match=match):
        relu.Architecture(edges, inputs=[0], outputs=[1])


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="mismatched shapes: U_1 has 3 rows but U_2 has 4"):
        relu.MLP([jnp.ones((3, 2)), jnp.ones((1, 4))])
    with pytest.raises(ValueError, match="mismatched shapes: b_2"):
        relu.MLP([jnp.ones((3, 2)), jnp.ones((1, 3))], [jnp.ones(3), jnp.ones(2)])
    with pytest.raises(ValueError, match="mismatched shapes: 15 edges"):
        relu.DAGNetwork(_DAG_EDGES, jnp.ones(12), inputs=(0, 1), outputs=(6, 7), constants=(2,))
    net = NETS["mlp2"]()
    with pytest.raises(ValueError, match="one entry per path"):
        relu.recover_squares(jnp.ones(3), relu.conservation_laws(net), net.arch)
    with pytest.raises(ValueError, match="one entry per hidden neuron"):
        relu.intrinsic_kernel(net.lift(), jnp.ones(5), net.arch)


def test_zero_weights_through_a_neuron_are_rejected():
    # All out-weights of hidden neuron 0 vanish: every path through it is zero, so z does
    # not determine its in-weights. Eager: a ValueError naming the neuron; under jit: the
    # runtime error of eqx.error_if.
    net = NETS["mlp2"]()
    U1, U2 = net.weights
    dead = relu.MLP([U1, U2.at[:, 0].set(0.0)], net.biases)
    z, h0 = dead.lift(), relu.conservation_laws(dead)
    with pytest.raises(ValueError, match=r"every path through neuron\(s\) \[2\] is zero"):
        relu.recover_squares(z, h0, dead.arch)
    with pytest.raises(Exception, match="z does not determine the squared weights"):
        eqx.filter_jit(relu.intrinsic_kernel)(z, h0, dead.arch)


def test_vector_that_is_not_a_path_lifting_is_rejected():
    net = NETS["mlp3"]()
    z = jnp.asarray(np.random.default_rng(0).normal(size=net.lift().shape))
    with pytest.raises(Exception, match="not a path-lifting"):
        relu.recover_squares(z, relu.conservation_laws(net), net.arch)
