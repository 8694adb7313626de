# %% [markdown]
# # ReLU training through the kinks
#
# For a ReLU network with edge weights $\theta_e$, the path-lifting $z_p = \prod_{e\in p}\theta_e$
# makes the output linear in $z$ *as long as the activation pattern on the data is fixed*;
# on such an interval the loss is $\ell_k(z)$, the metric is
# $M_{pq} = \sum_{e\in p\cap q} z_pz_q/\theta_e^2$, and it is a function of $z$ and the
# conserved quantities $h_v = \sum_{e\to v}\theta_e^2 - \sum_{v\to e}\theta_e^2$ (one per
# hidden neuron; THEORY §4). [`node_flow.relu.train`][] trains through the kinks of the
# ReLU, interval by interval: each time a pre-activation reaches zero (a diffrax event) it
# either **crosses** (the pattern changes) or, pushed onto zero from both sides, **slides**
# along it (the Filippov solution, the small-step limit of gradient descent). Beside the
# parameter flow it runs the intrinsic flow $\dot z = -K(z, h_0)\nabla\ell_k(z)$ and reports
# every interval.

# %%
import os

import jax
import jax.numpy as jnp


jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt  # noqa: E402

import node_flow.relu as relu  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"
samples, t1 = (12, 1.0) if FAST else (12, 3.0)

# %% [markdown]
# ## A two-layer MLP with biases, generic (unbalanced) initialization

# %%
kx, kw1, kw2, kb1, kb2 = jax.random.split(jax.random.key(0), 5)
X = jax.random.normal(kx, (samples, 2))
Y = jnp.stack([jnp.sin(2 * X[:, 0]) + 0.5 * X[:, 1], jnp.cos(X[:, 0]) * X[:, 1]], axis=1)
net = relu.MLP(
    [1.3 * jax.random.normal(kw1, (4, 2)), 0.6 * jax.random.normal(kw2, (2, 4))],
    [0.5 * jax.random.normal(kb1, (4,)), 0.5 * jax.random.normal(kb2, (2,))],
)
print(f"{net.arch.num_edges} edges, {net.arch.num_paths} paths, "
      f"{len(net.arch.hidden)} hidden neurons")  # fmt: skip

# %%
sol = relu.train(net, X, Y, t1, saves=11, rtol=1e-10, atol=1e-10)
print("stopped because:", sol.stop_reason, "| kink events at t =",
      [round(float(t), 4) for t in sol.switch_times])  # fmt: skip
for iv in sol.intervals:
    err = "-" if iv.intrinsic_error is None else f"{iv.intrinsic_error:.1e} ({iv.intrinsic_kind})"
    print(f"[{iv.start:.4f}, {iv.end:.4f}]  changed {list(iv.changed)}  "
          f"sliding {list(iv.sliding)}  intrinsic vs parameter: {err}")  # fmt: skip
zerr = jnp.max(jnp.abs(sol.zs - sol.zs_intrinsic)) / jnp.max(jnp.abs(sol.zs))
print(f"max relative |z_param - z_intrinsic| over all intervals: {float(zerr):.1e}")
assert len(sol.switch_times) >= 1 and float(zerr) < 1e-8  # solved to 1e-10

# %% [markdown]
# ## The metric is a function of $(z, h_0)$
#
# Along the whole trajectory, across every pattern change, the metric of the current
# weights equals the kernel [`node_flow.relu.intrinsic_kernel`][] rebuilt from $z(t)$ and
# the *initial* conservation laws alone (the squared weights are recovered by a convex
# rescaling problem, [`node_flow.relu.recover_squares`][]).


# %%
@jax.jit
def diagnostics(sol):
    """Relative |M(θ(t)) − K(z(t), h0)| at every save time, and the largest drift of h."""
    models = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), sol.models)
    zs = sol.zs.reshape(-1, sol.zs.shape[-1])
    M = jax.vmap(relu.metric_matrix)(models)
    K = jax.vmap(lambda z: relu.intrinsic_kernel(z, sol.h0, net.arch))(zs)
    rel = jnp.linalg.norm(M - K, axis=(1, 2)) / jnp.linalg.norm(M, axis=(1, 2))
    return rel, jnp.max(jnp.abs(jax.vmap(relu.conservation_laws)(models) - sol.h0))


rel, drift = diagnostics(sol)
assert float(jnp.max(rel)) < 1e-8 and float(drift) < 1e-8
print(f"max_t |M(θ) - K(z, h0)| / |M| = {float(jnp.max(rel)):.1e}; "
      f"max drift of h = {float(drift):.1e}")  # fmt: skip

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 3.5))
ts = sol.ts.ravel()
ax0.semilogy(ts, sol.losses.ravel(), "k")
ax0.set(xlabel="training time t", ylabel="loss", title="loss (red: pattern changes)")
ax1.semilogy(ts, jnp.maximum(rel, 1e-17), ".", label="|M(θ) − K(z, h₀)| / |M|")
ax1.set(xlabel="training time t", ylabel="relative error", title="intrinsic metric")
for ax in (ax0, ax1):
    for t in sol.switch_times:
        ax.axvline(float(t), color="tab:red", lw=0.8, ls="--")
ax1.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# `make relu` runs the same check on a three-layer MLP and a DAG with skip connections and
# writes `results/relu/relu_intrinsic.json` (see [Reproductions](../reproductions.md)).
