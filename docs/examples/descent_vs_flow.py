# %% [markdown]
# # Gradient descent against gradient flow
#
# Gradient descent with step $\eta$, $\theta_{k+1} = \theta_k - \eta\nabla L(\theta_k)$
# ([`node_flow.gradient_descent`][]), is the explicit Euler discretization of the gradient
# flow $\dot\theta = -\nabla L(\theta)$ ([`node_flow.gradient_flow`][]): iterate $k$ sits
# at training time $t_k = k\eta$, within $O(\eta)$ of the flow over a fixed horizon. Two
# things the flow has exactly, descent has only up to $O(\eta)$:
#
# - the trajectory itself, $\max_k\|z_k - z(t_k)\|$;
# - the conservation laws: for a deep linear network
#   $C_j = U_{j+1}^\top U_{j+1} - U_jU_j^\top$ changes by exactly
#   $\eta^2(G_{j+1}^\top G_{j+1} - G_jG_j^\top)$ per step ($G_j$ the gradients), so over
#   $T/\eta$ steps it drifts by $O(\eta)$.
#
# Both rates are measured below, with [`node_flow.plot.convergence`][] fitting the slopes.

# %%
import os

import jax
import jax.numpy as jnp


jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import node_flow as nf  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"
lrs = (0.05, 0.025) if FAST else (0.1, 0.05, 0.025, 0.0125, 0.00625)

# %% [markdown]
# ## One network, one flow, descents with several steps
#
# The flow is solved once and saved on a grid of 21 times; each descent saves every
# $\Delta t/\eta$ steps, so that its saves fall on the same grid.

# %%
key, kx, ky = jax.random.split(jax.random.key(0), 3)
lam = jnp.array([0.3, -0.2])
net = nf.init.relaxed_balanced(key, (4, 4, 4, 4), lam)
loss = nf.LeastSquares(jax.random.normal(kx, (4, 8)) / 8**0.5, jax.random.normal(ky, (4, 8)))
T, saves = 2.0, 21
ts = jnp.linspace(0.0, T, saves)
flow = nf.gradient_flow(net, loss, T, ts=ts, rtol=1e-10, atol=1e-10)

z_errors, c_drifts, descents = [], [], {}
for lr in lrs:
    every = round(T / (saves - 1) / lr)
    gd = nf.gradient_descent(net, loss, lr, every * (saves - 1), save_every=every)
    assert np.allclose(gd.ts, ts)  # the same save times t_k = k·η
    C = nf.conservation_laws(gd.models)  # one (saves, 4, 4) array per j
    z_errors.append(float(jnp.max(jnp.abs(gd.zs - flow.zs))))
    c_drifts.append(max(float(jnp.max(jnp.abs(Cj - Cj[0]))) for Cj in C))
    descents[lr] = gd
    print(f"η = {lr:<6}: max_k |z_k - z(t_k)| = {z_errors[-1]:.2e}, "
          f"max drift of C_j = {c_drifts[-1]:.2e}")  # fmt: skip

# %% [markdown]
# ## First order in $\eta$

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
_, fit_z = nf.plot.convergence(lrs, z_errors, ax=ax0, label="max_k |z_k − z(t_k)|")
_, fit_c = nf.plot.convergence(lrs, c_drifts, ax=ax0, label="drift of C_j")
ax0.set(xlabel="step η", ylabel="error", title="descent → flow as η → 0")
ax1.semilogy(flow.ts, flow.losses, "k", lw=2, label="gradient flow")
for lr, gd in descents.items():
    ax1.semilogy(gd.ts, gd.losses, "--", label=f"descent, η = {lr}")
ax1.set(xlabel="training time t = kη", ylabel="loss")
ax1.legend(fontsize=8)
fig.tight_layout()
print(f"slopes: trajectory {fit_z.slope:+.3f}, conservation laws {fit_c.slope:+.3f} (theory: +1)")
assert 0.8 < fit_z.slope < 1.2 and 0.8 < fit_c.slope < 1.2

# %% [markdown]
# The flow is the $\eta \to 0$ limit; what large steps do differently (edge of stability,
# the drift of the conservation laws over long runs) is the subject of
# `experiments/descent_vs_flow.py`.
