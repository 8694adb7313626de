# %% [markdown]
# # A sweep over seeds on several devices
#
# [`node_flow.sweep`][] runs a function on every configuration of a grid as **one** compiled
# `jax.vmap`, each batch sharded over a one-axis device mesh, results gathered next to their
# configuration. Here: 16 random residual networks (a key and an imbalance each) trained by
# gradient flow, on 4 devices.
#
# Without GPUs, split the CPU into host devices. `XLA_FLAGS` must be set **before JAX
# starts** (before the first `import jax` of the process); on a machine with GPUs, leave it
# out and `jax.devices()` lists them. Several hosts: [the multi-host guide](../multihost.md).

# %%
import os


os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt  # noqa: E402

import node_flow as nf  # noqa: E402


FAST = os.environ.get("NODE_FLOW_FAST") == "1"
num_configs, depth = (8, 8) if FAST else (64, 32)
print(jax.devices())

# %% [markdown]
# ## One configuration ↦ a pytree of arrays
#
# The function sees one configuration (its leaves without the leading axis) and returns
# arrays; everything it closes over (the data, the save times) is shared.

# %%
X = jax.random.normal(jax.random.key(1), (3, 6)) / 6**0.5
Y = jax.random.normal(jax.random.key(2), (3, 6))
loss = nf.LeastSquares(X, Y)
ts = jnp.linspace(0.0, 2.0, 21)


def train(config):
    A = 0.5 * jax.random.normal(config["key"], (depth, 3, 3)) + config["lam"] * jnp.eye(3)
    sol = nf.gradient_flow(nf.ResidualLinearNetwork(A), loss, 2.0, ts=ts)
    return {"losses": sol.losses, "z_final": sol.zs[-1]}


grid = {
    "key": jax.random.split(jax.random.key(0), num_configs),
    "lam": jnp.linspace(-0.5, 0.5, num_configs),
}

# %% [markdown]
# ## The sweep
#
# `batch_size` must be a multiple of the number of devices (each device gets
# `batch_size / len(devices)` configurations). With `out`, every finished batch is written
# atomically: a killed sweep, rerun, computes only the missing batches.

# %%
devices = jax.devices()
out = tempfile.mkdtemp(prefix="node_flow_sweep_")
res = nf.sweep(train, grid, batch_size=2 * len(devices), out=out)
print("losses:", res.results["losses"].shape, "| sharding:", res.sharding.spec,
      "| batches computed:", len(res.computed))  # fmt: skip
again = nf.sweep(train, grid, batch_size=2 * len(devices), out=out)
print("rerun: batches loaded from disk:", len(again.loaded), "computed:", len(again.computed))

# %% [markdown]
# Row $i$ of every result belongs to configuration $i$; `res[i]` returns both. Run alone,
# a configuration gives the same numbers, bitwise or to the last bits (`tests/test_sweep.py`
# checks it on 4 host devices; see the [guide](../multihost.md#rules) for when XLA's
# kernel choice changes the last bits).

# %%
config, result = res[3]
print(f"configuration 3: λ = {float(config['lam']):+.3f}, final loss {result['losses'][-1]:.4f}")

fig, ax = plt.subplots(figsize=(5.5, 3.4))
for lam, losses in zip(grid["lam"], res.results["losses"]):
    ax.semilogy(ts, losses, color=plt.cm.coolwarm(float(lam) + 0.5), lw=1)
title = f"{num_configs} networks, {len(devices)} devices"
ax.set(xlabel="training time t", ylabel="loss", title=title)
fig.tight_layout()
