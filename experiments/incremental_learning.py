r"""Incremental learning in deep matrix sensing: Gissin, Shalev-Shwartz & Daniely 2020
(arXiv 1909.12051) (`make incremental-learning`).

Matrix sensing $\ell(z) = \frac{1}{2m}\sum_{i=1}^m (\langle A_i, z\rangle - y_i)^2$
(`node_flow.MatrixSensing`) with $d = 50$, $W^\star = \operatorname{diag}(12, 6, 4, 3, 0, \dots)$,
$m = 1{,}000$ Gaussian $A_i$ (i.i.d. $N(0, 1)$ entries, so $\mathbb E\,\nabla\ell = z - W^\star$),
$y_i = \langle A_i, W^\star\rangle$. Every depth $N$ starts from the same end-to-end matrix
$z_0 = \text{scale}\cdot Q_1 \operatorname{diag}(u) Q_2^\top$ (Haar frames, $u \in [0.5, 1.5]$,
scale $10^{-4}$) and follows the intrinsic flow of a balanced depth-$N$ network,
$\dot z = -K_N(z)[\nabla\ell(z)]$ (`kernels.balanced`; $N = 1$ is plain gradient flow on $z$).

Per depth: the time $t_i$ at which $\sigma_i(z(t))$ first reaches half its target $s_i$
(`node_flow.crossing_time` on the dense solution), the ratios $t_{i+1}/t_i$, and the learning
phases $I_i = [t_i^{10\%}, t_i^{90\%}]$, where $\sigma_i$ crosses 10 % and 90 % of its final
value $\sigma_i(T)$ (the final value, not the target: with $m = 1{,}000 < d^2$ the flow
converges to an interpolant, which for depth 1 is far from $W^\star$). Two measures of
incrementality: the overlap fraction of consecutive phases $|I_i \cap I_{i+1}| /
\min(|I_i|, |I_{i+1}|)$ (0: one at a time; 1: one phase inside the other), and the relative
width $(t_i^{90\%} - t_i^{10\%}) / t_i^{50\%}$. The paper's claim: the values are learned one
at a time, more sharply as depth grows. Cross-check on one depth: the parameter flow
(`gradient_flow`) of a balanced network with the same $z_0$.

Run: `make incremental-learning`, or `python experiments/incremental_learning.py --help`.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _study import check_out, distinct, integer, positive, Progress, ResultStore, tolerance  # noqa: E402
from jax.tree_util import Partial  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


log = logging.getLogger("incremental_learning")

TARGET = (12.0, 6.0, 4.0, 3.0)
# Fractions of the final σ_i bounding a learning phase, and of the target for the headline time.
PHASE = (0.1, 0.9)
HALF = 0.5
# Horizon of depth N ≥ 2: this many times the scalar-law time (u' = N u^{2−2/N}(s − u)) of the
# smallest target value from the start scale to s/2; depth 1 relaxes at the smallest nonzero
# eigenvalue of the sensing operator (≈ 0.34 for m/d² = 0.4, Marchenko–Pastur), so 40 time
# units bring it to ~1e-6 of its initial residual.
HORIZON_FACTOR = 3.0
DEPTH1_HORIZON = 40.0
SAVES = 301


def problem(seed, d, m, scale):
    """Measurements $A$, $y$, the target $W^\\star$ and the common start $z_0$."""
    k_a, k_1, k_2, k_u = jax.random.split(jax.random.key(seed), 4)
    target = jnp.zeros(d).at[: len(TARGET)].set(jnp.asarray(TARGET))
    W = jnp.diag(target)
    A = jax.random.normal(k_a, (m, d, d))
    y = jnp.einsum("mij,ij->m", A, W)
    Q1, Q2 = orthogonal(k_1, d), orthogonal(k_2, d)
    u = 0.5 + jax.random.uniform(k_u, (d,))
    return A, y, W, scale * (Q1 * u) @ Q2.T


def orthogonal(key, n):
    """A Haar-random orthogonal matrix."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def balanced_network(z0, depth):
    r"""Balanced factors of $z_0 = X\operatorname{diag}(s)Y^\top$: $U_1 = D Y^\top$,
    $U_j = D$, $U_N = X D$, $D = \operatorname{diag}(s^{1/N})$ (so $U_{j+1}^\top U_{j+1} =
    U_j U_j^\top = D^2$ and $U_N \cdots U_1 = z_0$)."""
    X, s, Yt = jnp.linalg.svd(z0)
    D = jnp.diag(s ** (1.0 / depth))
    if depth == 1:
        return nf.LinearNetwork((z0,))
    layers = [D @ Yt] + [D] * (depth - 2) + [X @ D]
    return nf.LinearNetwork(tuple(layers))


def scalar_time(s, u0, depth, panels=64, nodes=32):
    r"""$\int_{u_0}^{s/2} du / (N u^{2-2/N}(s - u))$ (Gauss–Legendre in $\ln u$)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(np.log(u0), np.log(s / 2), panels + 1)
    a, b = edges[:-1, None], edges[1:, None]
    u = np.exp(0.5 * (b - a) * x + 0.5 * (a + b))
    f = u ** (2 / depth - 2) / (depth * (s - u)) * u
    return float(np.sum(0.5 * (b - a) * w * f))


def horizon(depth, scale):
    if depth == 1:
        return DEPTH1_HORIZON
    return HORIZON_FACTOR * scalar_time(min(TARGET), scale, depth)


@eqx.filter_jit
def sigma_crossings(sol, index, levels):
    r"""First times $\sigma_{\text{index}_k}(z(t)) \ge \text{levels}_k$ (NaN if never)."""

    def one(i, level):
        return nf.crossing_time(sol, lambda z: jnp.linalg.svd(z, compute_uv=False)[i], level)

    return jax.vmap(one)(index, levels)


def run_depth(A, y, W, z0, depth, T, args):
    """One dense intrinsic solve and its crossings; a JSON-ready record."""
    loss = nf.MatrixSensing(A, y)
    ts = jnp.linspace(0.0, T, SAVES)
    kernel = Partial(nf.kernels.balanced, depth=depth)
    sol = nf.intrinsic_flow(
        z0, loss, kernel, T, ts=ts, rtol=args.rtol, atol=args.atol, max_steps=args.max_steps,
        dense=True, throw=False,
    )  # fmt: skip
    ok = nf.RESULTS[sol.result] == nf.RESULTS[nf.RESULTS.successful]
    failed = None if ok else nf.RESULTS[sol.result]
    sig = np.linalg.svd(np.asarray(sol.zs), compute_uv=False)
    final = sig[-1, : len(TARGET)]
    k = len(TARGET)
    index = jnp.asarray(np.tile(np.arange(k), 4))
    levels = np.concatenate(
        [HALF * np.asarray(TARGET), PHASE[0] * final, HALF * final, PHASE[1] * final]
    )
    times = np.asarray(sigma_crossings(sol, index, jnp.asarray(levels))).reshape(4, k)
    return {
        "depth": depth,
        "T": T,
        "t_half_target": nan_to_none(times[0]),
        "t10_final": nan_to_none(times[1]),
        "t50_final": nan_to_none(times[2]),
        "t90_final": nan_to_none(times[3]),
        "final_sigma": final.tolist(),
        "final_sigma_next": float(sig[-1, k]),
        "final_loss": float(sol.losses[-1]),
        "final_rel_error": float(jnp.linalg.norm(sol.zs[-1] - W) / jnp.linalg.norm(W)),
        "steps": int(sol.stats["num_steps"]),
        "failed": failed,
        "ts": np.asarray(ts).tolist(),
        "sigma": sig[:, : k + 2].tolist(),
        "losses": np.asarray(sol.losses).tolist(),
    }


def nan_to_none(x):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, float)]


def analyse(rec):
    """Ratios of consecutive half-target times, phase overlaps and relative widths."""
    t = np.array([np.nan if v is None else v for v in rec["t_half_target"]])
    lo = np.array([np.nan if v is None else v for v in rec["t10_final"]])
    mid = np.array([np.nan if v is None else v for v in rec["t50_final"]])
    hi = np.array([np.nan if v is None else v for v in rec["t90_final"]])
    ratios = t[1:] / t[:-1]
    overlaps = []
    for i in range(len(t) - 1):
        inter = min(hi[i], hi[i + 1]) - max(lo[i], lo[i + 1])
        shortest = min(hi[i] - lo[i], hi[i + 1] - lo[i + 1])
        overlaps.append(max(inter, 0.0) / shortest)
    return {
        "ratios_t_next_over_t": nan_to_none(ratios),
        "phase_overlap_fraction": nan_to_none(overlaps),
        "mean_phase_overlap": finite_mean(overlaps),
        "relative_width": nan_to_none((hi - lo) / mid),
        "mean_relative_width": finite_mean((hi - lo) / mid),
    }


def finite_mean(x):
    """The mean, or None when any value is missing (a crossing not reached)."""
    x = np.asarray(x, float)
    return float(np.mean(x)) if np.all(np.isfinite(x)) else None


def cross_check(A, y, z0, depth, T, args):
    """Intrinsic against parameter flow (same z0, same save grid): max |Δz| and the
    half-target times of both (dense)."""
    loss = nf.MatrixSensing(A, y)
    ts = jnp.linspace(0.0, T, SAVES)
    tol = dict(rtol=args.rtol, atol=args.atol, max_steps=args.max_steps, dense=True)
    kernel = Partial(nf.kernels.balanced, depth=depth)
    intr = nf.intrinsic_flow(z0, loss, kernel, T, ts=ts, **tol)
    param = nf.gradient_flow(balanced_network(z0, depth), loss, T, ts=ts, save_models=False, **tol)
    index = jnp.arange(len(TARGET))
    levels = HALF * jnp.asarray(TARGET)
    t_i = np.asarray(sigma_crossings(intr, index, levels))
    t_p = np.asarray(sigma_crossings(param, index, levels))
    return {
        "depth": depth,
        "T": T,
        "max_abs_z_difference": float(jnp.max(jnp.abs(intr.zs - param.zs))),
        "max_abs_z": float(jnp.max(jnp.abs(intr.zs))),
        "t_half_target_intrinsic": t_i.tolist(),
        "t_half_target_parameter": t_p.tolist(),
        "max_rel_time_difference": float(np.max(np.abs(t_p - t_i) / t_i)),
        "steps_intrinsic": int(intr.stats["num_steps"]),
        "steps_parameter": int(param.stats["num_steps"]),
    }


# --- command line, summary, figure ---------------------------------------------------------


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=integer(1), nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--d", type=integer(len(TARGET) + 2), default=50, help="matrix size d × d")
    p.add_argument("--m", type=integer(1), default=1000, help="number of Gaussian measurements")
    p.add_argument(
        "--scale", type=positive, default=1e-4, help="singular values of z0 / [0.5, 1.5]"
    )
    p.add_argument(
        "--check-depth", type=integer(2), default=2, help="depth of the parameter-flow check"
    )
    p.add_argument("--no-check", action="store_true", help="skip the parameter-flow cross-check")
    p.add_argument(
        "--max-steps", type=integer(10), default=3000, help="also the dense buffers' length"
    )
    p.add_argument("--rtol", type=tolerance, default=1e-8)
    p.add_argument("--atol", type=tolerance, default=1e-10)
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--out", type=Path, default=Path("results/incremental_learning"))
    args = p.parse_args(argv)
    distinct(p, "--depths", args.depths)
    if args.scale >= min(TARGET) / 4:
        p.error(
            f"argument --scale: a small initialization is < {min(TARGET) / 4:g}; got {args.scale:g}"
        )
    check_out(p, args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    A, y, W, z0 = problem(args.seed, args.d, args.m, args.scale)
    store = ResultStore(args.out)
    common = {k: getattr(args, k) for k in ("seed", "d", "m", "scale", "rtol", "atol", "max_steps")}
    common.update(target=TARGET, saves=SAVES, phase=PHASE)
    depths = sorted(args.depths)
    progress = Progress(len(depths) + (not args.no_check), "incremental learning")
    rows = []
    for depth in depths:
        T = horizon(depth, args.scale)
        key = dict(common, depth=depth, T=T)
        rec = store.get(f"depth{depth}", key)
        if rec is None:
            t = time.time()
            rec = run_depth(A, y, W, z0, depth, T, args)
            rec["seconds"] = time.time() - t
            store.put(f"depth{depth}", key, rec)
        rec.update(analyse(rec))
        rows.append(rec)
        progress.step(f"depth {depth}: {rec['steps']} steps")
    check = None
    if not args.no_check:
        depth = args.check_depth
        T = horizon(depth, args.scale)
        key = dict(common, depth=depth, T=T, check=True)
        check = store.get("check", key)
        if check is None:
            check = cross_check(A, y, z0, depth, T, args)
            store.put("check", key, check)
        progress.step("parameter-flow check")
    headline = {
        str(r["depth"]): {
            k: r[k]
            for k in (
                "t_half_target", "ratios_t_next_over_t", "phase_overlap_fraction",
                "mean_phase_overlap", "relative_width", "mean_relative_width", "final_sigma",
                "final_sigma_next", "final_loss", "final_rel_error", "steps", "failed",
            )
        }
        for r in rows
    }  # fmt: skip
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target": TARGET,
        "definitions": {
            "t_half_target": "first t with σ_i(z(t)) ≥ s_i/2 (crossing_time, dense solution)",
            "phase": "I_i = [t10, t90]: σ_i crosses 10 % and 90 % of its final value σ_i(T)",
            "phase_overlap_fraction": "|I_i ∩ I_{i+1}| / min(|I_i|, |I_{i+1}|)",
            "relative_width": "(t90 − t10) / t50",
        },
        "claim": "singular values learned one at a time, more sharply as depth grows",
        "headline": headline,
        "check": check,
        "rows": rows,
        "seconds_total": time.time() - start,
    }
    atomic_write_json(args.out / "summary.json", summary)
    plot(args, summary)
    for r in rows:
        log.info(
            "depth %d: t_half %s, ratios %s, overlaps %s, widths %s",
            r["depth"], fmt(r["t_half_target"]), fmt(r["ratios_t_next_over_t"]),
            fmt(r["phase_overlap_fraction"]), fmt(r["relative_width"]),
        )  # fmt: skip
    log.info("check: %s", check)
    log.info("results in %s (%.1f s)", args.out, summary["seconds_total"])


def fmt(xs):
    return "[" + ", ".join("—" if x is None else f"{x:.3g}" for x in xs) + "]"


def plot(args, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        ts, sig = np.asarray(r["ts"]), np.asarray(r["sigma"])
        for i in range(sig.shape[1]):
            ax.plot(ts, sig[:, i], lw=1.2, label=f"σ{i + 1}")
        for t in r["t_half_target"]:
            if t is not None:
                ax.axvline(t, color="0.6", ls=":", lw=0.8)
        overlap = r["mean_phase_overlap"]
        note = "—" if overlap is None else f"{overlap:.2f}"
        ax.set_title(f"depth {r['depth']}, mean phase overlap {note}", fontsize=9)
        ax.set_xlabel("t")
    axes[0][0].set_ylabel("singular values of z")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"matrix sensing d = {args.d}, m = {args.m}, z0 scale {args.scale:g}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, args.out / "incremental_learning.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
