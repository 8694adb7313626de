# %% [markdown]
# # Your own lifting through the criterion
#
# Does a network you wrote down have an intrinsic dynamic — does $z = \varphi(\theta)$ follow a
# flow of its own? [`node_flow.criterion`](../api/criterion.md) answers the two questions
# that decide it, at a point $\theta$, for **any** lifting written as a JAX function
# (THEORY §1):
#
# 1. how many conservation laws there are: $D - \dim\mathrm{Lie}(\theta)$, where
#    $\mathrm{Lie}(\theta)$ is spanned by the $\nabla\varphi_i$ and their iterated brackets
#    ([`node_flow.criterion.conservation_laws`][]);
# 2. whether moving along the fibre of $\varphi$ inside the conserved leaf leaves the metric
#    $M = \partial\varphi\,\partial\varphi^\top$ unchanged,
#    $\ker\partial\varphi \cap \ker\partial h \subseteq \ker\partial M$
#    ([`node_flow.criterion.kernel_inclusion`][]) — a necessary condition for
#    $M(\theta) = K(z, h(\theta))$.
#
# Below: a two-layer factorization written by hand (the criterion recovers the known
# answers), then a variant with a diagonal gate in the middle.

# %%
import os

import jax
import jax.numpy as jnp


jax.config.update("jax_enable_x64", True)  # rank decisions need float64
import node_flow as nf  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"
n = 2 if FAST else 3
ku, kv, kg = jax.random.split(jax.random.key(0), 3)

# %% [markdown]
# ## A lifting written by hand: $z = UV^\top$
#
# `phi` takes any pytree of parameters and returns an array. For $z = UV^\top$ the
# conserved quantities are the entries of $C = U^\top U - V^\top V$: $n(n+1)/2$ of them.
# Passing them as `conserved` checks them against the Lie algebra (a function that is not
# conserved raises a `ValueError`).


# %%
def phi(theta):
    return theta["U"] @ theta["V"].T


def imbalance(theta):
    """The upper triangle of C = UᵀU − VᵀV."""
    C = theta["U"].T @ theta["U"] - theta["V"].T @ theta["V"]
    return C[jnp.triu_indices(n)]


generic = {"U": jax.random.normal(ku, (n, n)), "V": jax.random.normal(kv, (n, n))}
laws = nf.criterion.conservation_laws(phi, generic, imbalance)
print(f"D - dim Lie = {laws.num_params} - {laws.dim_lie} = {laws.count} "
      f"(theory n(n+1)/2 = {n * (n + 1) // 2}); complete: {laws.complete}")  # fmt: skip
assert laws.count == n * (n + 1) // 2 and laws.complete

# %% [markdown]
# ## The kernel-inclusion criterion: generic against relaxed balanced
#
# At a generic point $C$ is not isotropic and the criterion fails: some direction keeps $z$
# and $h$ fixed but moves $M$. At a *relaxed balanced* point, $C = \lambda I$, it holds —
# and there the intrinsic kernel is known in closed form (THEORY §2). Such a point:
# $U = (V^\top V + \lambda I)^{1/2}$.


# %%
def relaxed_balanced(V, lam):
    w, Q = jnp.linalg.eigh(V.T @ V + lam * jnp.eye(n))
    return {"U": (Q * jnp.sqrt(w)) @ Q.T, "V": V}


balanced = relaxed_balanced(generic["V"], 0.7)
for name, theta in [("generic", generic), ("C = 0.7 I", balanced)]:
    verdict = nf.criterion.kernel_inclusion(phi, theta, imbalance)
    print(f"{name:>10}: holds={verdict.holds}, residual {verdict.residual:.1e}, "
          f"dim(ker ∂φ ∩ ker ∂h) = {verdict.dim_intersection}, gap {verdict.gap:.0e}")  # fmt: skip

# %% [markdown]
# `residual` is scale-free in $[0, 1]$; `gap` is the smallest singular-value gap behind the
# rank decisions, and `holds` is `None` ("undecided") rather than a guess when a gap is
# below `min_gap`.
#
# ## A variant: a diagonal gate, $z = U\,\mathrm{diag}(g)\,V^\top$
#
# Each column can be rescaled, $u_j \to a u_j$, $g_j \to b g_j$, $v_j \to v_j/(ab)$,
# without changing $z$: two conservation laws per column, $\|u_j\|^2 - g_j^2$ and
# $\|v_j\|^2 - g_j^2$, and nothing else. Even with every column balanced
# ($\|u_j\| = |g_j| = \|v_j\|$), the criterion finds a direction along the fibre that
# changes $M$: $M$ is then not a function of $(z, h)$, and no intrinsic kernel exists there.


# %%
def gated(theta):
    return (theta["U"] * theta["g"]) @ theta["V"].T


def column_laws(theta):
    g2 = theta["g"] ** 2
    return jnp.concatenate(
        [jnp.sum(theta["U"] ** 2, axis=0) - g2, jnp.sum(theta["V"] ** 2, axis=0) - g2]
    )


V = generic["V"] / jnp.linalg.norm(generic["V"], axis=0)  # unit columns,
g = jnp.abs(jax.random.normal(kg, (n,))) + 0.5
theta = {"U": generic["U"] / jnp.linalg.norm(generic["U"], axis=0) * g, "g": g, "V": V * g}
laws = nf.criterion.conservation_laws(gated, theta, column_laws)  # ‖u_j‖ = g_j = ‖v_j‖
verdict = nf.criterion.kernel_inclusion(gated, theta, column_laws)
print(f"laws: {laws.count} (known {laws.num_known}, complete {laws.complete}); "
      f"criterion holds={verdict.holds}, residual {verdict.residual:.1e}")  # fmt: skip
assert laws.count == 2 * n and verdict.holds is False

# %% [markdown]
# The built-in liftings (`nf.criterion.liftings`: deep linear, residual, neural-ODE grid,
# rank-one, ReLU paths) accept a node_flow model directly with `phi=None`; `make criterion`
# tabulates them (see [Reproductions](../reproductions.md)).
