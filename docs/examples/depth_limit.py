# %% [markdown]
# # The depth limit in ten minutes
#
# A residual linear network $z = U_L\cdots U_1$, $U_k = I + A_k/L$, trained by gradient flow
# for the metric $\frac1L\sum_k\|A_k\|^2$, is a discretization of the **linear neural ODE**
# $\partial_s\Phi = A(s)\Phi$, $z = \Phi(1, 0)$. When the network is exactly *relaxed
# balanced* (its conservation laws are $C_k = \frac{\lambda(k/L)}{L^2}I$ for a profile
# $\lambda(s)$), THEORY §3 predicts that $z_L(t)$ converges, at rate $1/L$, to the intrinsic
# flow of the neural ODE,
#
# $$\dot z = -K_\infty(z)[\nabla\ell(z)], \qquad
#   K_\infty(z)[G] = \int_0^1 (zz^\top)^{1-s}\,G\,(z^\top z)^s\,ds,$$
#
# and that the limit **does not depend on $\lambda(\cdot)$**. This page checks both claims in
# a few lines; `make run` is the full study (more depths, grids of the neural ODE itself,
# conservation-law drifts; see [Reproductions](../reproductions.md)).

# %%
import os

import diffrax
import jax
import jax.numpy as jnp


jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import node_flow as nf  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"
depths = (4, 8) if FAST else (4, 8, 16, 32, 64, 128, 256)

# %% [markdown]
# ## Three imbalance profiles with one limit
#
# [`node_flow.neural_ode.relaxed_balanced_weights`][] builds a weight function $A(s)$ whose
# conservation law is exactly $\Lambda(s) = \lambda(s)I$; `same_z0=True` shifts it so that
# every profile has the same $z_0 = \Phi(1,0)$. Its `.residual(L)` is the exactly relaxed
# balanced depth-$L$ network.

# %%
n = 3
key_w, key_x, key_y = jax.random.split(jax.random.key(0), 3)
profiles = {
    "λ = 0": 0.0,
    "λ = 1": 1.0,
    "λ = 2 cos 2πs": lambda s: 2.0 * jnp.cos(2 * jnp.pi * s),
}
weights = [
    nf.neural_ode.relaxed_balanced_weights(key_w, n, lam, same_z0=True) for lam in profiles.values()
]
loss = nf.LeastSquares(
    jax.random.normal(key_x, (n, 2 * n)) / (2 * n) ** 0.5, jax.random.normal(key_y, (n, 2 * n))
)
T, ts, tol = 2.0, jnp.linspace(0.0, 2.0, 21), dict(rtol=1e-10, atol=1e-10)

# %% [markdown]
# ## The limit: the intrinsic flow of the neural ODE
#
# Every flow accepts a diffrax progress meter: `diffrax.TqdmProgressMeter()` draws a
# [tqdm](https://tqdm.github.io/) bar of the training time reached, updated from inside the
# compiled solve (`diffrax.TextProgressMeter()` prints percentages instead).

# %%
z0 = weights[0].z0()
print("spread of z0 over the profiles:", float(max(jnp.max(jnp.abs(w.z0() - z0)) for w in weights)))
meter = diffrax.TqdmProgressMeter()
limit = nf.intrinsic_flow(z0, loss, nf.kernels.neural_ode, T, ts=ts, progress_meter=meter, **tol)

# %% [markdown]
# ## Finite depths: the parameter flow of each network
#
# One compiled flow per depth, vmapped over the three profiles (the networks are stacked
# along a leading axis).


# %%
def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def trajectories(nets):
    return jax.vmap(lambda net: nf.gradient_flow(net, loss, T, ts=ts, **tol).zs)(nets)


errors, spreads = [], []
for L in depths:
    zs = trajectories(stack([w.residual(L) for w in weights]))  # (profiles, times, n, n)
    errors.append(np.max(np.linalg.norm(zs - limit.zs, axis=(-2, -1)), axis=-1))
    spreads.append(float(np.max(np.linalg.norm(zs - zs[:1], axis=(-2, -1)))))
    print(f"L = {L:4d}: max_t |z_L - z_∞| =", ", ".join(f"{e:.2e}" for e in errors[-1]))
errors = np.array(errors)  # (depths, profiles)

# %% [markdown]
# ## The rate
#
# A least-squares fit of $\log\max_t\|z_L - z_\infty\|$ against $\log L$, on $L \ge 16$
# when the run has them (the full study, `make run`, fits $16 \le L \le 1024$ and finds
# $-1.004$, $-0.984$, $-0.988$).

# %%
fit = [i for i, L in enumerate(depths) if L >= 16] or list(range(len(depths)))
slopes = np.polyfit(np.log(np.array(depths)[fit]), np.log(errors[fit]), 1)[0]
for name, slope in zip(profiles, slopes):
    print(f"{name:>15}: slope {slope:+.3f}  (theory: -1)")
assert np.all((slopes < -0.8) & (slopes > -1.2)), slopes

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 3.6))
for name, e in zip(profiles, errors.T):
    ax0.loglog(depths, e, "o-", label=name)
ax0.loglog(depths, errors[0, 0] * depths[0] / np.array(depths), "k:", label="1/L")
ax0.set(xlabel="depth L", ylabel="max_t |z_L(t) − z_∞(t)|", title="convergence to the ODE")
ax0.legend(fontsize=8)
ax1.loglog(depths, spreads, "o-", color="k")
ax1.set(xlabel="depth L", ylabel="max distance between profiles", title="λ(·) drops out")
fig.tight_layout()

# %% [markdown]
# The profiles' trajectories also approach each other at rate $1/L$: in the limit a
# profile only adds $f(s)I$ with $\int f = 0$ to $A$, which rescales $\Phi(1,s)$ and
# $\Phi(s,0)$ by reciprocal scalars — the $\lambda$-independence of $K_\infty$.
