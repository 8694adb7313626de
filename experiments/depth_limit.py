r"""The depth limit of relaxed balanced linear networks (THEORY §3, claim 4).

Depth-L residual networks $U_k = I + A_k/L$, exactly relaxed balanced ($C_k = \lambda(k/L)/L^2
\, I$), trained by gradient flow for the metric $(1/L)\sum\|A_k\|^2$, are compared with

- their own finite-depth intrinsic flow $\dot z = -\frac1L K_L(z)[\nabla\ell]$ (must agree to
  solver tolerance),
- the continuum intrinsic flow $\dot z = -K_\infty(z)[\nabla\ell]$ of the linear neural ODE,
  which does not depend on $\lambda(\cdot)$ (errors must decay like $1/L$),

for three imbalance profiles sharing the same limit $z_0$; and the neural-ODE training flow
on grids of m cells (nested diffrax solves) is compared with the same limit (errors must
decay like $h^2$). Every number lands in `summary.json`, one CSV row per run, and figures.

Run: `make depth-limit` (= `make run`), or `python experiments/depth_limit.py --help`.
"""

import argparse
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _study import (  # noqa: E402
    check_out,
    distinct,
    finite,
    fit_loglog,
    integer,
    positive,
    Progress,
    ResultStore,
    slope_text,
    tolerance,
)
from jax.tree_util import Partial  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_csv, atomic_write_json  # noqa: E402


log = logging.getLogger("depth_limit")


PROFILES = ("zero", "constant", "oscillating")


def make_profiles(names, constant, amplitude):
    """The λ(s) profiles: zero, a positive constant, and an oscillation with zero double
    integral ∫₀¹(1 − r)λ(r)dr = 0 (so z0 is the same as for λ = 0 even without shifting)."""
    table = {
        "zero": 0.0,
        "constant": float(constant),
        "oscillating": lambda s: amplitude * jnp.cos(2 * jnp.pi * s),
    }
    return {name: table[name] for name in names}


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def max_norm_over_time(a, b):
    """max_t ||a(t) − b(t)||_F for arrays with a leading time axis."""
    return float(jnp.max(jnp.linalg.norm(a - b, axis=(-2, -1))))


def successful(swept, entry: str):
    """The first output of every configuration of a sweep whose `fn` returns `(outputs,
    result codes)`, or `FlowError` naming the entry, each failed profile and why. The flows
    run with `throw=False`, so a failure is a result code the sweep lists
    (`SweepResult.failed`), not an `eqx.error_if` host callback compiled into the batch."""
    if swept.failed:
        why = "; ".join(f"profile #{i}: {reason}" for i, reason in sorted(swept.failed.items()))
        raise nf.FlowError(f"depth_limit: {entry}: {why}")
    return swept.results[0]


def run_depth(L, weights, loss, ts, tol):
    """Parameter flow and finite-depth intrinsic flow of the depth-L networks of every
    profile, swept over profiles with `nf.sweep` (vmap over every device; one compilation
    per L)."""
    nets = stack([w.residual(L) for w in weights])
    lams = stack([w.lambdas(L) for w in weights])
    T = float(ts[-1])

    def one(net, lam):
        param = nf.gradient_flow(net, loss, T, ts=ts, throw=False, **tol)
        kernel = Partial(nf.kernels.relaxed_balanced, lambdas=lam)
        intr = nf.intrinsic_flow(
            net.lift(), loss, kernel, T, ts=ts, time_scale=1.0 / L, throw=False, **tol
        )
        C = jax.vmap(nf.conservation_laws)(param.models)  # (times, L-1, n, n)
        U = jax.vmap(lambda m: m.factors())(param.models)
        drift = jnp.max(jnp.abs(C - C[0])) if L > 1 else jnp.zeros(())
        scale = jnp.max(jnp.abs(U)) ** 2
        outputs = param.zs, intr.zs, param.losses, drift, drift / scale, param.stats["num_steps"]
        return outputs, (param.result, intr.result)

    zp, zi, losses, drift, rel_drift, steps = successful(
        nf.sweep(lambda c: one(*c), (nets, lams)), f"depth {L}"
    )
    return {
        "z_param": np.asarray(zp),
        "z_intrinsic": np.asarray(zi),
        "losses": np.asarray(losses),
        "drift": np.asarray(drift),
        "rel_drift": np.asarray(rel_drift),
        "steps": np.asarray(steps),
    }


def run_limit(weights, loss, ts, tol):
    """The continuum intrinsic flow K_∞ from each profile's exact z0 (identical z0s)."""
    z0s = jnp.stack([w.z0() for w in weights])
    T = float(ts[-1])

    def flow(z0):
        sol = nf.intrinsic_flow(z0, loss, nf.kernels.neural_ode, T, ts=ts, throw=False, **tol)
        return sol, sol.result

    sol = successful(nf.sweep(flow, z0s), "limit")
    return {"z": np.asarray(sol.zs), "losses": np.asarray(sol.losses)}


def run_grid(m, weights, loss, ts, tol):
    """The L² training flow of the weight functions sampled on m cells (piecewise linear),
    swept over profiles; the conservation law Λ at the nodes before and after."""
    nodes = stack([w.grid(m) for w in weights])
    T = float(ts[-1])

    def one(node):
        sol = nf.gradient_flow(node, loss, T, ts=ts, throw=False, **tol)
        lam0 = node.conservation_law()
        lam1 = nf.LinearNeuralODE(sol.models.A[-1]).conservation_law()
        drift = jnp.max(jnp.abs(lam1 - lam0), axis=(-2, -1))
        outputs = sol.zs, sol.losses, jnp.max(drift[1:-1]), jnp.maximum(drift[0], drift[-1])
        return outputs, sol.result

    zs, losses, drift_inner, drift_ends = successful(nf.sweep(one, nodes), f"grid {m}")
    return {
        "z": np.asarray(zs),
        "losses": np.asarray(losses),
        "lambda_drift_interior": np.asarray(drift_inner),
        "lambda_drift_ends": np.asarray(drift_ends),
    }


def run_entry(kind, size, weights, loss, ts, tol, args):
    """One cached entry: the limit flow, the depth-`size` networks or the `size`-cell grid."""
    if kind == "limit":
        return run_limit(weights, loss, ts, tol)
    if kind == "depth":
        return run_depth(size, weights, loss, ts, tol)
    return run_grid(size, weights, loss, ts, dict(rtol=args.grid_rtol, atol=args.grid_rtol))


def to_lists(d):
    return {k: np.asarray(v).tolist() for k, v in d.items()}


def from_lists(d):
    return {k: np.asarray(v) for k, v in d.items()}


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=integer(1), nargs="+", default=[2**k for k in range(2, 11)])
    p.add_argument(
        "--grid", type=integer(2), nargs="*", default=[4, 8, 16, 32, 64], help="cells m ≥ 2"
    )
    p.add_argument("--width", type=integer(1), default=3)
    p.add_argument(
        "--profiles",
        nargs="+",
        choices=PROFILES,
        default=list(PROFILES),
        help="λ(s) profiles among zero, constant, oscillating",
    )
    p.add_argument("--lambda-constant", type=finite, default=1.0)
    p.add_argument("--lambda-amplitude", type=finite, default=2.0)
    p.add_argument("--T", type=positive, default=2.0, help="training horizon")
    p.add_argument("--saves", type=integer(2), default=21, help="save points in [0, T]")
    p.add_argument("--rtol", type=tolerance, default=1e-10)
    p.add_argument("--atol", type=tolerance, default=1e-10)
    p.add_argument("--grid-rtol", type=tolerance, default=1e-9)
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--fit-from", type=integer(1), default=16, help="smallest L in the slope fit")
    p.add_argument("--out", type=Path, default=Path("results/depth_limit"))
    p.add_argument("--fresh", action="store_true", help="ignore finished entries")
    args = p.parse_args(argv)
    for flag in ("depths", "grid", "profiles"):
        distinct(p, f"--{flag}", getattr(args, flag))
    args.depths, args.grid = sorted(args.depths), sorted(args.grid)
    fitted = [L for L in args.depths if L >= args.fit_from]
    if len(fitted) < 2:
        p.error(
            f"argument --fit-from: the slope fit needs at least two depths ≥ --fit-from = "
            f"{args.fit_from}, and --depths {' '.join(map(str, args.depths))} has "
            f"{len(fitted)}; lower --fit-from or add depths"
        )
    check_out(p, args.out)
    return args


# What each cached entry depends on: changing one of these flags recomputes the entries that
# use it; any other flag (--depths, --grid, --fit-from, --out, --fresh) recomputes nothing.
_PROBLEM = ("width", "profiles", "lambda_constant", "lambda_amplitude", "T", "saves", "seed")
_DEPENDS_ON = {
    "limit": _PROBLEM + ("rtol", "atol"),
    "depth": _PROBLEM + ("rtol", "atol"),
    "grid": _PROBLEM + ("grid_rtol",),
}


def depends_on(args, kind: str, size: int | None) -> dict:
    """The inputs of one cached entry: the flags its computation reads, and its size."""
    return {"kind": kind, "size": size, **{k: getattr(args, k) for k in _DEPENDS_ON[kind]}}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    store = ResultStore(args.out)

    key_w, key_x, key_y = jax.random.split(jax.random.key(args.seed), 3)
    n = args.width
    profiles = make_profiles(args.profiles, args.lambda_constant, args.lambda_amplitude)
    weights = [
        nf.neural_ode.relaxed_balanced_weights(key_w, n, lam, same_z0=True)
        for lam in profiles.values()
    ]
    loss = nf.LeastSquares(
        jax.random.normal(key_x, (n, 2 * n)) / (2 * n) ** 0.5,
        jax.random.normal(key_y, (n, 2 * n)),
    )
    ts = jnp.linspace(0.0, args.T, args.saves)
    tol = dict(rtol=args.rtol, atol=args.atol)
    names = list(profiles)

    tasks = [("limit", None)] + [("depth", L) for L in args.depths]
    tasks += [("grid", m) for m in args.grid]
    bar = Progress(len(tasks), "depth-limit")
    results, timings = {}, {}
    for kind, size in tasks:
        name = kind if size is None else f"{kind}_{size:05d}"
        inputs = depends_on(args, kind, size)
        cached = None if args.fresh else store.get(name, inputs)
        if cached is not None:
            results[name], timings[name] = from_lists(cached["result"]), cached["seconds"]
            bar.step(f"{name} (resumed)")
            continue
        t0 = time.time()
        try:
            res = run_entry(kind, size, weights, loss, ts, tol, args)
        except ValueError as e:  # e.g. a λ profile infeasible at this depth
            raise SystemExit(
                f"depth_limit: {name}: {e}\nThe λ profiles come from --profiles, "
                f"--lambda-constant {args.lambda_constant} and --lambda-amplitude "
                f"{args.lambda_amplitude}; the entries already finished are kept in "
                f"{store.dir} and a rerun resumes from them."
            ) from e
        seconds = time.time() - t0
        store.put(name, inputs, {"result": to_lists(res), "seconds": seconds})
        results[name], timings[name] = res, seconds
        bar.step(f"{name} {seconds:5.1f}s")

    summary, rows = summarize(args, names, results, timings)
    summary["seconds_total"] = time.time() - start
    atomic_write_json(args.out / "summary.json", summary)
    atomic_write_csv(args.out / "runs.csv", rows)
    plot(args, names, results, summary)
    report(summary)


def summarize(args, names, results, timings):
    limit = results["limit"]["z"]
    depth = {}
    rows = []
    for L in args.depths:
        r = results[f"depth_{L:05d}"]
        for i, p in enumerate(names):
            err = max_norm_over_time(r["z_param"][i], limit[i])
            agree = max_norm_over_time(r["z_param"][i], r["z_intrinsic"][i])
            depth.setdefault(
                p, {"L": [], "error": [], "param_vs_intrinsic": [], "drift": [], "rel_drift": []}
            )
            d = depth[p]
            d["L"].append(L)
            d["error"].append(err)
            d["param_vs_intrinsic"].append(agree)
            d["drift"].append(float(r["drift"][i]))
            d["rel_drift"].append(float(r["rel_drift"][i]))
            rows.append(
                {
                    "phase": "depth",
                    "profile": p,
                    "L": L,
                    "m": "",
                    "error_vs_limit": err,
                    "param_vs_intrinsic": agree,
                    "conservation_drift": float(r["drift"][i]),
                    "conservation_drift_rel": float(r["rel_drift"][i]),
                    "lambda_drift_interior": "",
                    "lambda_drift_ends": "",
                    "loss_T": float(r["losses"][i, -1]),
                    "steps": int(r["steps"][i]),
                    "seconds_batch": timings[f"depth_{L:05d}"],
                }
            )
    fit_L = [L for L in args.depths if L >= args.fit_from]
    for p, d in depth.items():
        sel = [i for i, L in enumerate(d["L"]) if L in fit_L]
        d["fit"] = fit_loglog(np.array(d["L"])[sel], np.array(d["error"])[sel])
        d["fit_all"] = fit_loglog(d["L"], d["error"])
    collapse = {"L": list(args.depths), "pairs": {}}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            key = f"{names[a]}-{names[b]}"
            errs = [
                max_norm_over_time(
                    results[f"depth_{L:05d}"]["z_param"][a], results[f"depth_{L:05d}"]["z_param"][b]
                )
                for L in args.depths
            ]
            sel = [i for i, L in enumerate(args.depths) if L in fit_L]
            collapse["pairs"][key] = {
                "distance": errs,
                "fit": fit_loglog(np.array(args.depths)[sel], np.array(errs)[sel]),
            }
    grid = {}
    for m in args.grid:
        r = results[f"grid_{m:05d}"]
        for i, p in enumerate(names):
            err = max_norm_over_time(r["z"][i], limit[i])
            g = grid.setdefault(
                p, {"m": [], "error": [], "lambda_drift_interior": [], "lambda_drift_ends": []}
            )
            g["m"].append(m)
            g["error"].append(err)
            g["lambda_drift_interior"].append(float(r["lambda_drift_interior"][i]))
            g["lambda_drift_ends"].append(float(r["lambda_drift_ends"][i]))
            rows.append(
                {
                    "phase": "grid",
                    "profile": p,
                    "L": "",
                    "m": m,
                    "error_vs_limit": err,
                    "param_vs_intrinsic": "",
                    "conservation_drift": "",
                    "conservation_drift_rel": "",
                    "lambda_drift_interior": float(r["lambda_drift_interior"][i]),
                    "lambda_drift_ends": float(r["lambda_drift_ends"][i]),
                    "loss_T": float(r["losses"][i, -1]),
                    "steps": "",
                    "seconds_batch": timings[f"grid_{m:05d}"],
                }
            )
    if len(args.grid) >= 2:
        for g in grid.values():
            g["fit"] = fit_loglog(g["m"], g["error"])
            g["fit_lambda_drift_interior"] = fit_loglog(g["m"], g["lambda_drift_interior"])
            g["fit_lambda_drift_ends"] = fit_loglog(g["m"], g["lambda_drift_ends"])
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "profiles": names,
        "depth": depth,
        "collapse": collapse,
        "grid": grid,
        "limit_loss": results["limit"]["losses"][0].tolist(),
        "ts": np.linspace(0.0, args.T, args.saves).tolist(),
        "max_param_vs_intrinsic": max(max(d["param_vs_intrinsic"]) for d in depth.values()),
        "seconds": timings,
    }
    return summary, rows


def plot(args, names, results, summary):
    """`error_vs_depth.png` (the depth panel alone) and the six panels of `depth_limit.png`,
    drawn with `node_flow.plot`: the convergence panels refit the summary's points (the
    same least-squares fit as `summary.json`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(names, ["C0", "C1", "C2", "C3"]))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    depth_panel(ax, args, names, summary, colors)
    atomic_savefig(fig, args.out / "error_vs_depth.png")
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    depth_panel(axes[0, 0], args, names, summary, colors)
    grid_panel(axes[0, 1], args, summary, colors)
    curves_panels(axes[0, 2], axes[1, 2], args, names, results, summary)
    ax = axes[1, 0]
    ts, limit = np.asarray(summary["ts"]), results["limit"]["z"][0]
    for style, L in (("--", args.depths[0]), ("-", args.depths[-1])):
        r = results[f"depth_{L:05d}"]
        for i, p in enumerate(names):
            distance = np.linalg.norm(r["z_param"][i] - limit, axis=(-2, -1))
            ax.plot(ts, distance, style, color=colors[p], label=f"{p}, L = {L}")
    ax.set_yscale("log")
    ax.set(xlabel="training time t", ylabel=r"$\|z_L(t) - z_\infty(t)\|_F$")
    ax.set_title("the λ profiles collapse onto one limit")
    ax.legend(fontsize=7)
    agreement_panel(axes[1, 1], summary, colors)
    fig.tight_layout()
    atomic_savefig(fig, args.out / "depth_limit.png")
    plt.close(fig)


def depth_panel(ax, args, names, summary, colors):
    """Error against the limit vs L per profile, and the distances between profiles, each
    with its fitted slope over L ≥ --fit-from (`nf.plot.convergence`), and a 1/L guide."""
    L = np.asarray(args.depths, float)
    start = int(np.searchsorted(L, args.fit_from))
    for p, d in summary["depth"].items():
        nf.plot.convergence(d["L"], d["error"], ax=ax, label=p, fit_from=start, color=colors[p])
    for key, c in summary["collapse"]["pairs"].items():
        nf.plot.convergence(
            summary["collapse"]["L"], c["distance"], ax=ax, label=f"between {key}",
            fit_from=start, color="gray", marker="x", ls="--", alpha=0.7,
        )  # fmt: skip
    ref = summary["depth"][names[0]]["error"][-1] * L[-1] / L
    ax.loglog(L, ref, "k:", lw=1, label="1/L")
    integer_ticks(ax, args.depths)
    ax.set_xlabel("depth L")
    ax.set_ylabel(r"$\max_t \|z_L(t) - z_\infty(t)\|_F$")
    ax.set_title("residual networks → neural-ODE intrinsic flow")
    ax.legend(fontsize=7)


def grid_panel(ax, args, summary, colors):
    """Neural-ODE training on m cells against the limit, fitted over every m."""
    for p, g in summary["grid"].items():
        if "fit" in g:
            nf.plot.convergence(g["m"], g["error"], ax=ax, label=p, color=colors[p])
        else:  # one grid size: no slope
            ax.loglog(g["m"], g["error"], "o-", color=colors[p], label=p)
    integer_ticks(ax, args.grid)
    ax.set_xlabel("grid cells m")
    ax.set_ylabel(r"$\max_t \|z_m(t) - z_\infty(t)\|_F$")
    ax.set_title("neural-ODE training on a grid (nested diffrax solves)")
    ax.legend(fontsize=7)


def curves_panels(ax_sv, ax_loss, args, names, results, summary):
    """Singular values and loss along the flows of the last profile at a few depths, and
    along the limit (`nf.plot.singular_values`, `nf.plot.loss`)."""
    import matplotlib.pyplot as plt

    ts = np.asarray(summary["ts"])
    shown = [L for L in args.depths if L in (args.depths[0], 16, 64, args.depths[-1])]
    for j, L in enumerate(shown):
        r = results[f"depth_{L:05d}"]
        flow = SimpleNamespace(ts=ts, zs=r["z_param"][-1], losses=r["losses"][-1])
        style = dict(color=plt.cm.viridis(j / max(len(shown) - 1, 1)), label=f"L = {L}")
        nf.plot.singular_values(flow, ax=ax_sv, lw=1.2, **style)
        nf.plot.loss(flow, ax=ax_loss, **style)
    limit = SimpleNamespace(
        ts=ts, zs=results["limit"]["z"][0], losses=np.asarray(summary["limit_loss"])
    )
    nf.plot.singular_values(limit, ax=ax_sv, color="k", ls="--", lw=1, label="limit K∞")
    nf.plot.loss(limit, ax=ax_loss, color="k", ls="--", label="limit")
    ax_sv.set(xlabel="training time t", ylabel="singular values of z(t)")
    ax_sv.set_title(f"profile '{names[-1]}'")
    ax_loss.set(xlabel="training time t", ylabel="loss")
    ax_loss.set_title("loss curves")
    for ax in (ax_sv, ax_loss):
        ax.legend(fontsize=7)


def agreement_panel(ax, summary, colors):
    """Conservation drift and parameter-vs-intrinsic agreement against L, the drift of the
    Λ laws against m (round-off level quantities: no slope is fitted)."""
    for p, d in summary["depth"].items():
        drift, agree = (np.maximum(d[k], 1e-17) for k in ("rel_drift", "param_vs_intrinsic"))
        ax.loglog(d["L"], drift, "o-", color=colors[p], label=f"{p}: C_k drift / |U|²")
        ax.loglog(d["L"], agree, "s:", color=colors[p], alpha=0.6, label=f"{p}: param vs intrinsic")
    for p, g in summary["grid"].items():
        for key, style, where in (("interior", "^-", "interior"), ("ends", "v--", "ends")):
            ax.loglog(
                g["m"], g[f"lambda_drift_{key}"], style, color=colors[p], alpha=0.8,
                label=f"{p}: Λ drift ({where}), vs m",
            )  # fmt: skip
    ax.set_xlabel("L (drift, agreement) or m (Λ drift)")
    ax.set_title("conservation and agreement")
    ax.legend(fontsize=6)


def integer_ticks(ax, values):
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def report(summary):
    for p, d in summary["depth"].items():
        log.info(
            "depth slope %-12s %s   (all L: %.3f)",
            p,
            slope_text(d["fit"]),
            d["fit_all"]["slope"],
        )
    for key, c in summary["collapse"]["pairs"].items():
        log.info("collapse %-22s slope %s", key, slope_text(c["fit"]))
    for p, g in summary["grid"].items():
        if "fit" in g:
            log.info(
                "grid slope %-12s %s; Λ drift interior %.3f, ends %.3f",
                p,
                slope_text(g["fit"]),
                g["fit_lambda_drift_interior"]["slope"],
                g["fit_lambda_drift_ends"]["slope"],
            )
    log.info("max |z_param − z_intrinsic| = %.2e", summary["max_param_vs_intrinsic"])
    log.info("total %.1f s", summary["seconds_total"])


if __name__ == "__main__":
    main()
