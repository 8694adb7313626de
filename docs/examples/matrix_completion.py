# %% [markdown]
# # Implicit bias in matrix completion
#
# Fill in a low-rank matrix from a few of its entries by training a deep linear network
# $z = U_L\cdots U_1$ on the observed entries only,
# $\ell(z) = \frac{1}{2|\Omega|}\sum_{(i,j)\in\Omega}(z_{ij} - y_{ij})^2$
# ([`node_flow.MatrixCompletion`][]). Many $z$ fit the observations exactly; which one
# gradient flow finds is decided by the depth and the small initialization, not by the
# loss. Arora, Cohen, Hu & Luo (2019, arXiv 1905.13655) found that deeper networks find
# solutions of lower **effective rank** ([`node_flow.effective_rank`][],
# $\exp(-\sum_k p_k\ln p_k)$, $p_k = \sigma_k/\sum_l\sigma_l$) that generalize better to the
# unobserved entries.
#
# From a balanced start $U_j = \alpha^{1/L}I$ the network's $z$ follows the intrinsic flow
# $\dot z = -K_L(z)\nabla\ell(z)$ with Arora et al.'s kernel
# $K_L(z)[G] = \sum_{j=1}^L (zz^\top)^{\frac{L-j}{L}}\,G\,(z^\top z)^{\frac{j-1}{L}}$
# ([`node_flow.kernels.balanced`][]) — an $n\times n$ flow instead of $L$ of them, and
# $L = 1$ is plain gradient flow on $z$.

# %%
import os

import jax
import jax.numpy as jnp


jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import node_flow as nf  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"
n, rank, observed = (8, 2, 0.65) if FAST else (12, 2, 0.5)
depths = (1, 3) if FAST else (1, 2, 3, 4)

# %% [markdown]
# ## A rank-2 matrix, part of its entries observed

# %%
k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
W = jax.random.normal(k1, (n, rank)) @ jax.random.normal(k2, (rank, n)) / np.sqrt(rank)
mask = np.asarray(jax.random.uniform(k3, (n, n)) < observed)
rows, cols = np.nonzero(mask)
loss = nf.MatrixCompletion(rows, cols, W[rows, cols], (n, n))
print(f"{mask.sum()} of {n * n} entries observed; a rank-{rank} matrix has "
      f"{rank * (2 * n - rank)} degrees of freedom")  # fmt: skip


def test_error(z):
    """Relative error on the unobserved entries."""
    return jnp.linalg.norm(jnp.where(mask, 0.0, z - W), axis=(-2, -1)) / np.linalg.norm(
        np.where(mask, 0.0, W)
    )


# %% [markdown]
# ## Train at every depth from the same small $z_0 = \alpha I$
#
# The plateau before learning lengthens with depth and shrinks with $\alpha$: save on a
# logarithmic time grid and allow enough steps.

# %%
alpha, T = 1e-3, 1e4
ts = jnp.geomspace(1e-2, T, 80)
runs = {}
for L in depths:
    kernel = jax.tree_util.Partial(nf.kernels.balanced, depth=L)  # depth: a static int
    sol = nf.intrinsic_flow(alpha * jnp.eye(n), loss, kernel, T, ts=ts, rtol=1e-8, atol=1e-12)
    runs[L] = sol
    z = sol.zs[-1]
    print(f"L = {L}: train loss {float(sol.losses[-1]):.1e}, effective rank "
          f"{float(nf.effective_rank(z)):.2f}, test error {float(test_error(z)):.3f}")  # fmt: skip

# %% [markdown]
# Depth 1 fits the observed entries and leaves the others where they started (near zero):
# the minimum-Frobenius-norm completion, of high effective rank. Deeper networks learn the
# singular values one at a time and stop near rank 2, recovering the missing entries.

# %%
deep, shallow = runs[depths[-1]].zs[-1], runs[1].zs[-1]
assert float(nf.effective_rank(deep)) < float(nf.effective_rank(shallow)) - 1.0
assert float(test_error(deep)) < 0.5 * float(test_error(shallow))

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for L, sol in runs.items():
    axes[0].semilogx(sol.ts, nf.effective_rank(sol.zs), label=f"L = {L}")
    axes[1].loglog(sol.ts, test_error(sol.zs), label=f"L = {L}")
    axes[2].semilogy(np.linalg.svd(sol.zs[-1], compute_uv=False), "o-", label=f"L = {L}")
axes[0].set(xlabel="training time t", ylabel="effective rank of z(t)")
axes[1].set(xlabel="training time t", ylabel="error on unobserved entries")
axes[2].set(xlabel="k", ylabel="σ_k of the final z", title="singular values")
axes[0].legend()
fig.tight_layout()
