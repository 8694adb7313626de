r"""Implicit bias to low rank that no norm explains: Razin & Cohen 2020 (`make norms-vs-rank`).

A 2 × 2 matrix completion with observed $w_{12} = w_{21} = 1$, $w_{22} = 0$
($\ell(z) = \frac13\sum_{\Omega}\frac12(z_{ij} - y_{ij})^2$, `nf.MatrixCompletion`), trained by
the balanced depth-$N$ intrinsic flow from a small start with $\det z_0 > 0$. Since the flow
never changes the sign of $\det z = w_{11}w_{22} - w_{12}w_{21}$, fitting the observations
($w_{12}w_{21} \to 1$, $w_{22} \to 0^+$) forces $w_{11} > w_{12}w_{21}/w_{22} \to \infty$: every
norm diverges while the effective rank tends to 1. Measured along the flow against the loss:
$|w_{11}|$, the nuclear and Frobenius norms, the effective rank (`nf.effective_rank`), the sign
of $\det z$, and the time and steps to reach the target loss.

The flow is `nf.log_polar_flow` ($z = Qe^S$: the sign of $\det z$ is $\det Q$, kept exactly)
with the implicit `diffrax.Kvaerno5` (the flow is stiff: its fast rate grows like
$N\sigma_{\max}^{2-2/N}$ while the loss decays like a power of $t$). Two checks: integrating $z$
itself at depth 2 (`nf.intrinsic_flow`, the issue's tolerances) crosses $\det z = 0$, a
numerical artifact reported here; and the parameter flow of a balanced depth-3 network
(`nf.gradient_flow`) agrees with `log_polar_flow` over a range where both are accurate.

Run: `make norms-vs-rank`, or `python experiments/norms_vs_rank.py --help`.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _study import (  # noqa: E402
    check_out,
    distinct,
    finite,
    integer,
    positive,
    Progress,
    ResultStore,
    tolerance,
)

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


log = logging.getLogger("norms_vs_rank")

LOSS = nf.MatrixCompletion(
    jnp.array([0, 1, 1]), jnp.array([1, 0, 1]), jnp.array([1.0, 1.0, 0.0]), (2, 2)
)
# Newton (chord) iterations of the implicit stages stop at 1e-3 of the step's error
# tolerance, the usual setting for stiff solvers: the step's accuracy is decided by the error
# estimate, and tighter inner tolerances only cause rejected steps.
CHORD = dict(rtol=1e-3, atol=1e-6)


def solver():
    return diffrax.Kvaerno5(root_finder=diffrax.VeryChord(**CHORD))


class LossBelow:
    """The event ℓ(z) ≤ level (a class, so the compiled solve is reused across depths)."""

    def __init__(self, level):
        self.level = level

    def __call__(self, t, z):
        return LOSS(z) <= self.level


def trajectory(sol):
    """The measured quantities at the save times reached (arrays, time first)."""
    keep = np.isfinite(np.asarray(sol.ts))
    z = np.asarray(sol.zs)[keep]
    log_s = np.asarray(sol.models.log_singular_values())[keep]
    s = np.exp(log_s)
    return {
        "t": np.asarray(sol.ts)[keep].tolist(),
        "loss": np.asarray(sol.losses)[keep].tolist(),
        "abs_w11": np.abs(z[:, 0, 0]).tolist(),
        "nuclear_norm": s.sum(axis=1).tolist(),
        "frobenius_norm": np.sqrt((s**2).sum(axis=1)).tolist(),
        "effective_rank": np.asarray(nf.effective_rank(z)).tolist(),
        "log_singular_values": log_s.tolist(),
        "det_sign_from_Q": np.asarray(sol.models.det_sign())[keep].tolist(),
        "det_from_z": np.linalg.det(z).tolist(),
        "orthogonality_drift": np.asarray(sol.models.orthogonality_drift())[keep].tolist(),
    }


def erank_minus_one(log_s):
    r"""$\operatorname{erank} - 1 = \operatorname{expm1}(-\sum_a p_a\ln p_a)$ from the carried
    $\ln\sigma_a$ (rows), without rounding $p_{\max} = 1 - \sum_{a \ne \max} p_a$ to 1: with
    $\ln p_a = \rho_a - \operatorname{logsumexp}\rho$ and $\ln p_{\max} =
    \operatorname{log1p}(-\sum_{a\ne\max} p_a)$ it resolves $\operatorname{erank} - 1$ far
    below $10^{-16}$, where an SVD of $z$ only sees rounding."""
    rho = np.sort(np.asarray(log_s, float), axis=1)[:, ::-1]
    top = rho[:, :1]
    log_p_rest = rho[:, 1:] - top - np.log1p(np.sum(np.exp(rho[:, 1:] - top), axis=1))[:, None]
    p_rest = np.exp(log_p_rest)
    p_top = 1.0 - np.sum(p_rest, axis=1)
    entropy = -np.sum(p_rest * log_p_rest, axis=1) - p_top * np.log1p(-np.sum(p_rest, axis=1))
    return np.expm1(entropy)


def derived(traj):
    """Measures from the carried state: det z = det Q · exp(Σ ln σ) (exact, where the det of
    the formed z is rounding once σ_min < ε σ_max), erank − 1, and where z resolves σ_min."""
    log_s = np.asarray(traj["log_singular_values"])
    sign = np.asarray(traj["det_sign_from_Q"])
    resolvable = np.min(log_s, axis=1) - np.max(log_s, axis=1) > np.log(1e-8)
    em1 = erank_minus_one(log_s)
    svd_erank = np.asarray(traj["effective_rank"])
    return {
        "log_abs_det": np.sum(log_s, axis=1),
        "det_sign": sign,
        "det_sign_always_positive": bool(
            np.all(sign > 0) and np.all(np.asarray(traj["det_from_z"])[resolvable] > 0)
        ),
        "erank_minus_one": em1,
        "erank_vs_nf_effective_rank": float(np.max(np.abs(1 + em1 - svd_erank))),
    }


def run_depth(args, depth):
    """`log_polar_flow` from z0 until the loss reaches the target (or t_max)."""
    z0 = jnp.asarray(args.z0).reshape(2, 2)
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-2, args.t_max, args.saves - 1)])
    start = time.time()
    sol = nf.log_polar_flow(
        z0, LOSS, depth, args.t_max, ts=ts, rtol=args.rtol, atol=args.atol, solver=solver(),
        max_steps=args.max_steps, event=LossBelow(args.target_loss), throw=False, dense=True,
    )  # fmt: skip
    jax.block_until_ready(sol.zs)
    seconds = time.time() - start
    reached = bool(sol.result == nf.RESULTS.event_occurred)
    failed = None if reached or sol.result == nf.RESULTS.successful else nf.RESULTS[sol.result]
    traj = trajectory(sol)
    t_final = float(sol.t_final)
    z_final = np.asarray(sol.evaluate(sol.t_final))
    s_final = np.linalg.svd(z_final, compute_uv=False)
    record = {
        "depth": depth,
        "reached_target_loss": reached,
        "failed": failed,
        "t_final": t_final,
        "loss_final": float(LOSS(jnp.asarray(z_final))),
        "abs_w11_final": float(abs(z_final[0, 0])),
        "nuclear_norm_final": float(s_final.sum()),
        "frobenius_norm_final": float(np.sqrt((s_final**2).sum())),
        "effective_rank_final": float(nf.effective_rank(z_final)),
        "det_final": float(np.linalg.det(z_final)),
        "max_orthogonality_drift": float(np.max(traj["orthogonality_drift"])),
        "steps": int(sol.stats["num_steps"]),
        "accepted_steps": int(sol.stats["num_accepted_steps"]),
        "rejected_steps": int(sol.stats["num_rejected_steps"]),
        "seconds_with_compilation": seconds,
        "trajectory": traj,
    }
    check = cross_check(args, sol) if depth == args.check_depth else None
    return record, check


def balanced_network(z0, depth, key):
    r"""$U_1 = P_1DY^\top$, $U_j = P_jDP_{j-1}^\top$, $U_N = XDP_{N-1}^\top$,
    $D = \operatorname{diag}(s^{1/N})$ for $z_0 = X\operatorname{diag}(s)Y^\top$: exactly
    balanced, with product $z_0$; the frames $P_j$ are Haar-random (seeded)."""
    X, s, Yt = np.linalg.svd(np.asarray(z0))
    frames = [Yt.T]
    for k in jax.random.split(key, depth - 1):
        q, r = np.linalg.qr(np.asarray(jax.random.normal(k, (2, 2))))
        frames.append(q * np.sign(np.diagonal(r)))
    frames.append(X)
    d = s ** (1.0 / depth)
    return nf.LinearNetwork(
        tuple(jnp.asarray((frames[j + 1] * d) @ frames[j].T) for j in range(depth))
    )


def cross_check(args, sol):
    """The parameter flow of a balanced network (Tsit5, tight tolerances) against the dense
    output of the log-polar solve on [0, check_t]: the largest |Δz| relative to max |z|."""
    z0 = jnp.asarray(args.z0).reshape(2, 2)
    net = balanced_network(z0, args.check_depth, jax.random.key(args.seed))
    ts = jnp.linspace(0.0, args.check_t, 41)
    param = nf.gradient_flow(
        net, LOSS, args.check_t, ts=ts, rtol=1e-10, atol=1e-12, max_steps=args.max_steps,
        save_models=False,
    )  # fmt: skip
    z_lp = jax.vmap(sol.evaluate)(jnp.minimum(ts, sol.t_final))
    diff = float(jnp.max(jnp.abs(param.zs - z_lp)))
    return {
        "depth": args.check_depth,
        "t_range": [0.0, args.check_t],
        "max_abs_z_difference": diff,
        "max_abs_z": float(jnp.max(jnp.abs(z_lp))),
        "relative_difference": diff / float(jnp.max(jnp.abs(z_lp))),
        "parameter_flow_steps": int(param.stats["num_steps"]),
        "det_sign_parameter_flow_end": float(np.sign(np.linalg.det(np.asarray(param.zs[-1])))),
    }


def plain_flow_artifact(args):
    """Integrating z itself at depth 2 (`intrinsic_flow`, the issue's tolerances): where det z
    first changes sign on the save grid, and the end state."""
    z0 = jnp.asarray(args.z0).reshape(2, 2)
    ts = jnp.linspace(0.0, args.plain_t, 301)
    sol = nf.intrinsic_flow(
        z0, LOSS, lambda z, G: nf.kernels.balanced(z, G, 2), args.plain_t, ts=ts, rtol=1e-10,
        atol=1e-13, max_steps=args.max_steps, throw=False,
    )  # fmt: skip
    det = np.linalg.det(np.asarray(sol.zs))
    crossed = np.flatnonzero(det <= 0)
    return {
        "depth": 2,
        "rtol": 1e-10,
        "atol": 1e-13,
        "t_end": args.plain_t,
        "result": nf.RESULTS[sol.result],
        "first_save_with_det_le_0": float(ts[crossed[0]]) if crossed.size else None,
        "det_end": float(det[-1]),
        "w11_end": float(sol.zs[-1, 0, 0]),
        "loss_end": float(sol.losses[-1]),
    }


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=integer(2), nargs="+", default=[2, 3])
    p.add_argument(
        "--z0",
        type=finite,
        nargs=4,
        default=[1e-2, 3e-3, -2e-3, 1e-2],
        help="the start, row-major (w11 w12 w21 w22); det must be > 0",
    )
    p.add_argument("--target-loss", type=positive, default=1e-6)
    p.add_argument("--t-max", type=positive, default=1e9, help="time limit of each solve")
    p.add_argument("--saves", type=integer(3), default=80)
    p.add_argument("--rtol", type=tolerance, default=1e-8)
    p.add_argument("--atol", type=tolerance, default=1e-10)
    p.add_argument("--max-steps", type=integer(1), default=50_000)
    p.add_argument("--check-depth", type=integer(2), default=3)
    p.add_argument("--check-t", type=positive, default=300.0)
    p.add_argument("--plain-t", type=positive, default=300.0)
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--out", type=Path, default=Path("results/norms_vs_rank"))
    args = p.parse_args(argv)
    check_out(p, args.out)
    distinct(p, "--depths", args.depths)
    w = args.z0
    if not w[0] * w[3] - w[1] * w[2] > 0:
        p.error(f"argument --z0: det z0 = {w[0] * w[3] - w[1] * w[2]:g} must be > 0 (the setting)")
    if args.check_depth not in args.depths:
        p.error(f"argument --check-depth: {args.check_depth} must be one of --depths")
    if args.check_t >= args.t_max:
        p.error("argument --check-t: must be below --t-max")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    store = ResultStore(args.out)
    common = {k: getattr(args, k) for k in ("z0", "target_loss", "t_max", "saves", "rtol")}
    common |= {"atol": args.atol, "max_steps": args.max_steps, "solver": "Kvaerno5", **CHORD}
    bar = Progress(len(args.depths) + 1, "norms_vs_rank")
    depths, check = {}, None
    for depth in args.depths:
        key = {**common, "depth": depth}
        if depth == args.check_depth:
            key |= {"check_t": args.check_t, "seed": args.seed}
        entry = store.get(f"depth_{depth}", key)
        if entry is None:
            record, chk = run_depth(args, depth)
            entry = {"record": record, "check": chk}
            store.put(f"depth_{depth}", key, entry)
        depths[str(depth)] = entry["record"]
        check = entry["check"] or check
        r = entry["record"]
        bar.step(f"depth {depth}: t = {r['t_final']:.3g}, loss {r['loss_final']:.2e}")
    key = {"z0": args.z0, "plain_t": args.plain_t, "max_steps": args.max_steps}
    plain = store.get("plain_flow", key)
    if plain is None:
        plain = plain_flow_artifact(args)
        store.put("plain_flow", key, plain)
    bar.step("plain flow")
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "headline": headline(depths, check, plain, args),
        "depths": depths,
        "parameter_flow_check": check,
        "plain_flow_artifact": plain,
        "seconds_total": time.time() - start,
    }
    atomic_write_json(args.out / "summary.json", summary)
    plot(args, summary)
    for d, h in summary["headline"]["by_depth"].items():
        log.info("depth %s: %s", d, h)
    log.info("results in %s (%.1f s)", args.out, summary["seconds_total"])


def headline(depths, check, plain, args):
    by_depth = {}
    for d, r in depths.items():
        traj = r["trajectory"]
        extra = derived(traj)
        loss = np.asarray(traj["loss"])
        late = loss < 1e-2  # past the initial plateau
        grows = lambda x: bool(np.all(np.diff(np.asarray(x)[late]) > 0))
        falls = lambda x: bool(np.all(np.diff(np.asarray(x)[late]) < 0))
        by_depth[d] = {
            "reached_target_loss": r["reached_target_loss"],
            "t_to_target": r["t_final"] if r["reached_target_loss"] else None,
            "loss_final": r["loss_final"],
            "steps": r["steps"],
            "seconds_with_compilation": r["seconds_with_compilation"],
            "abs_w11_final": r["abs_w11_final"],
            "nuclear_norm_final": r["nuclear_norm_final"],
            "frobenius_norm_final": r["frobenius_norm_final"],
            "effective_rank_final": r["effective_rank_final"],
            "effective_rank_minus_one_final": float(extra["erank_minus_one"][-1]),
            "erank_from_log_singular_values_vs_nf_effective_rank": extra[
                "erank_vs_nf_effective_rank"
            ],
            "log_sigma_min_final": float(np.min(traj["log_singular_values"][-1])),
            # ρ_max − ρ_min beyond 40N − 10: ln σ_min sits at log_polar_flow's floor (an upper
            # bound of the exact value; z is unaffected), so erank − 1 is an upper bound too.
            "log_sigma_min_at_floor": bool(
                np.ptp(traj["log_singular_values"][-1]) > 40 * int(d) - 10
            ),
            "log_abs_det_final": float(extra["log_abs_det"][-1]),
            "det_sign_always_positive": extra["det_sign_always_positive"],
            "norms_grow_as_loss_falls": grows(traj["abs_w11"])
            and grows(traj["nuclear_norm"])
            and grows(traj["frobenius_norm"]),
            "effective_rank_falls": falls(extra["erank_minus_one"]),
            "max_orthogonality_drift": r["max_orthogonality_drift"],
        }
    claim = all(
        h["det_sign_always_positive"]
        and h["norms_grow_as_loss_falls"]
        and h["effective_rank_falls"]
        and h["effective_rank_final"] < 1.01
        for h in by_depth.values()
    )
    return {
        "by_depth": by_depth,
        "claim_reproduced": claim,
        "parameter_vs_log_polar_relative": None if check is None else check["relative_difference"],
        "plain_flow_det_crossed_at": plain["first_save_with_det_le_0"],
    }


def plot(args, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", ":", "-."]
    for j, (d, r) in enumerate(summary["depths"].items()):
        tr = r["trajectory"]
        ls = styles[j % len(styles)]
        loss = tr["loss"]
        axes[0].loglog(loss, tr["abs_w11"], "C0" + ls, label=f"|w11|, N = {d}")
        axes[0].loglog(loss, tr["nuclear_norm"], "C1" + ls, label=f"nuclear, N = {d}")
        axes[0].loglog(loss, tr["frobenius_norm"], "C2" + ls, label=f"Frobenius, N = {d}")
        extra = derived(tr)
        axes[1].loglog(loss, extra["erank_minus_one"], "C3" + ls, label=f"erank − 1, N = {d}")
        ratio = np.exp(np.min(tr["log_singular_values"], 1) - np.max(tr["log_singular_values"], 1))
        floored = summary["headline"]["by_depth"][d]["log_sigma_min_at_floor"]
        note = f" (floored at e^-{40 * int(d)}: an upper bound there)" if floored else ""
        axes[1].loglog(loss, ratio, "C4" + ls, label=f"σ_min/σ_max, N = {d}{note}")
    for ax in axes:
        ax.invert_xaxis()
        ax.set_xlabel("training loss")
    axes[0].set_ylabel("norm")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    positive = all(h["det_sign_always_positive"] for h in summary["headline"]["by_depth"].values())
    axes[1].set_title("det z > 0 throughout" if positive else "det z changed sign")
    fig.suptitle("Razin & Cohen 2020: 2 × 2 completion, balanced depth-N flow (log-polar)")
    fig.tight_layout()
    atomic_savefig(fig, args.out / "norms_vs_rank.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
