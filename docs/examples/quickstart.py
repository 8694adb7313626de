# %% [markdown]
# # Quick start: a deep linear network, two ways
#
# A deep linear network $z = U_3U_2U_1$ is trained on a least-squares loss
# $\ell(z) = \|zX - Y\|^2/(2N)$ twice: in parameter space, $\dot\theta = -\nabla L(\theta)$
# ([`node_flow.gradient_flow`][]), and directly in $z$ through its intrinsic kernel,
# $\dot z = -K(z)\nabla\ell(z)$ ([`node_flow.intrinsic_flow`][]). The start is *relaxed
# balanced*, $U_{j+1}^\top U_{j+1} - U_jU_j^\top = \lambda_j I$, which is what makes the
# kernel a function of $z$ alone (see [Concepts](../concepts.md)).
#
# Run it as a script (`python docs/examples/quickstart.py`) or read it here with its
# outputs. `NODE_FLOW_FAST=1` shortens every example (the test suite uses it).

# %%
import os

import jax
import jax.numpy as jnp


jax.config.update("jax_enable_x64", True)  # the verification precision; float32 works too
import matplotlib.pyplot as plt  # noqa: E402

import node_flow as nf  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"

# %% [markdown]
# ## The model, the loss, the two flows
#
# This cell is the README's quick start, unchanged.

# %%
key, kx, ky = jax.random.split(jax.random.key(0), 3)
lam = jnp.array([0.3, -0.2])  # imbalances C_j = λ_j I
net = nf.init.relaxed_balanced(key, (4, 4, 4, 4), lam)  # z = U_3 U_2 U_1
loss = nf.LeastSquares(jax.random.normal(kx, (4, 8)), jax.random.normal(ky, (4, 8)))
ts = jnp.linspace(0.0, 2.0, 21)
param = nf.gradient_flow(net, loss, 2.0, ts=ts, rtol=1e-10, atol=1e-10)  # θ' = −∇L(θ)
kernel = jax.tree_util.Partial(nf.kernels.relaxed_balanced, lambdas=lam)
intr = nf.intrinsic_flow(net.lift(), loss, kernel, 2.0, ts=ts, rtol=1e-10, atol=1e-10)
print(jnp.max(jnp.abs(param.zs - intr.zs)))  # ~1e-9: z follows its own flow

# %%
gap = float(jnp.max(jnp.abs(param.zs - intr.zs)))
assert gap < 1e-7, gap  # both are solved to 1e-10: the gap is solver error, not a model error

# %% [markdown]
# Both solutions are [`node_flow.FlowSolution`][]s: `ts`, `zs` (a leading time axis),
# `losses`, `models` (the parameters at every save time, for the parameter flow), `stats`
# and `result`. The conservation laws $C_j(t)$ stay at $\lambda_j I$:

# %%
C = nf.conservation_laws(param.models)  # one (times, 4, 4) array per j
drift = [float(jnp.max(jnp.abs(Cj - l * jnp.eye(4)))) for Cj, l in zip(C, lam)]
print("max_t |C_j(t) - λ_j I| =", [f"{d:.1e}" for d in drift])
steps = int(param.stats["num_steps"]), int(intr.stats["num_steps"])
print(f"solver steps: {steps[0]} (parameter flow), {steps[1]} (intrinsic flow)")

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.4))
ax0.semilogy(param.ts, param.losses, "k", label="parameter flow")
ax0.semilogy(intr.ts, intr.losses, "C1--", label="intrinsic flow")
ax0.set(xlabel="training time t", ylabel="loss ℓ(z(t))", title="the same trajectory")
ax0.legend()
sv = jnp.linalg.svd(param.zs, compute_uv=False)
ax1.plot(param.ts, sv)
ax1.set(xlabel="training time t", ylabel="singular values of z(t)", title="z(t) = U₃U₂U₁")
fig.tight_layout()

# %% [markdown]
# The first call of each flow compiled it; a call with new arrays of the same shapes (another
# seed, other data, another `lam`) reuses the compilation. Flows accept diffrax's progress
# meters for long solves: `progress_meter=diffrax.TqdmProgressMeter()` (shown in
# [the depth-limit example](depth_limit.py)).

# %% [markdown]
# ## Next
#
# - [The depth limit in ten minutes](depth_limit.py): residual networks converge to the
#   linear neural ODE at rate $1/L$, whatever the imbalance profile.
# - [Your own lifting through the criterion](criterion.py).
# - The [API reference](../api/index.md) and the [FAQ](../faq.md) (float32, `max_steps`,
#   tolerances).
