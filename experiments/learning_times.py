r"""Learning times of deep linear networks: Saxe et al. (2014) and its deep and imbalanced laws
(`make learning-times`).

On a whitened target ($\ell(z) = \frac12\|z - Y\|_F^2$, `LeastSquares(√n I, √n Y)`), each mode of
a balanced network aligned with the target's singular vectors is a scalar $u$ with

- two layers: $u' = 2u(s - u)$, time to reach $u_f$:
  $t = \frac{1}{2s}\ln\frac{u_f (s - u_0)}{u_0 (s - u_f)}$ (Saxe et al. 2014, eq. 11);
- depth $L$: $u' = L u^{2 - 2/L}(s - u)$, time $\int_{u_0}^{u_f} \frac{du}{L u^{2-2/L}(s-u)}$ by
  composite Gauss–Legendre quadrature in $x = \ln u$ (an analytic integrand);
- two layers with imbalance $U^\top U - V^\top V = \lambda I$: $\sigma' = \sqrt{\lambda^2 +
  4\sigma^2}\,(s - \sigma)$, time $F(\sigma_f) - F(\sigma_0)$ with
  $F(\sigma) = \frac{1}{2r}\ln\frac{s\sigma + c^2 + r\sqrt{\sigma^2 + c^2}}{s - \sigma}$,
  $c = |\lambda|/2$, $r = \sqrt{s^2 + c^2}$.

The flows are node_flow's intrinsic flows (`kernels.balanced`, `kernels.relaxed_balanced`),
batched with `node_flow.sweep`; the time each mode reaches $s/2$ is found by `nf.crossing_time`
on the dense output of the flow (`dense=True`), for the projection $u_\alpha^\top z\, v_\alpha$.
A full matrix case (distinct target singular values, random frames) checks that each mode
follows its own scalar law, and the parameter flow of the same network (`gradient_flow`) is
compared with the intrinsic flow.

Run: `make learning-times`, or `python experiments/learning_times.py --help`.
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
from _study import check_out, distinct, finite, integer, positive, tolerance  # noqa: E402
from jax.tree_util import Partial  # noqa: E402
from jaxtyping import Array, Float  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


log = logging.getLogger("learning_times")

# Composite Gauss–Legendre in x = ln u: the integrand u^{2/L-1}/(L(s-u)) is analytic in x,
# with its nearest singularity (u = s) at distance ln 2 beyond the end x = ln(s/2). 32 panels
# of 32 nodes converge to rounding (the summary records the change when the panels double).
QUAD_PANELS, QUAD_NODES = 32, 32
# The horizon of each solve, in units of the longest theoretical time it must reach: the
# event stops the solve well before; a configuration that does not cross is reported failed.
HORIZON = 3.0
MAX_STEPS = 100_000


# --- theory: independent of the flows ----------------------------------------------------


def saxe_time(s, u0, uf):
    r"""Two-layer learning time $\frac{1}{2s}\ln\frac{u_f(s-u_0)}{u_0(s-u_f)}$ (Saxe eq. 11)."""
    s, u0, uf = (np.asarray(x, float) for x in (s, u0, uf))
    return np.log(uf * (s - u0) / (u0 * (s - uf))) / (2 * s)


def _log_quadrature(integrand, u0, uf, panels):
    """$\\int_{u_0}^{u_f} g(u)\\,du = \\int_{\\ln u_0}^{\\ln u_f} g(e^x) e^x dx$, composite
    Gauss–Legendre."""
    x, w = np.polynomial.legendre.leggauss(QUAD_NODES)
    edges = np.linspace(np.log(u0), np.log(uf), panels + 1)
    a, b = edges[:-1, None], edges[1:, None]
    u = np.exp(0.5 * (b - a) * x + 0.5 * (a + b))
    return float(np.sum(0.5 * (b - a) * w * integrand(u) * u))


def deep_time(s, u0, uf, depth, panels=QUAD_PANELS):
    r"""Depth-$L$ learning time $\int_{u_0}^{u_f} du / (L u^{2-2/L}(s-u))$ by quadrature."""
    return _log_quadrature(lambda u: u ** (2 / depth - 2) / (depth * (s - u)), u0, uf, panels)


def imbalanced_time(s, s0, sf, lam):
    r"""Time for $\sigma' = \sqrt{\lambda^2 + 4\sigma^2}(s - \sigma)$ from $\sigma_0$ to
    $\sigma_f$, in closed form (module docstring); $\lambda = 0$ gives `saxe_time`."""
    c2 = np.asarray(lam, float) ** 2 / 4
    r = np.sqrt(s**2 + c2)
    F = lambda x: np.log((s * x + c2 + r * np.sqrt(x**2 + c2)) / (s - x)) / (2 * r)
    return F(sf) - F(s0)


def imbalanced_time_quadrature(s, s0, sf, lam, panels=QUAD_PANELS):
    """The same time by quadrature (an independent check of the closed form)."""
    return _log_quadrature(lambda x: 1 / (np.sqrt(lam**2 + 4 * x**2) * (s - x)), s0, sf, panels)


# --- flows ---------------------------------------------------------------------------------


class ModeCrossing(eqx.Module):
    r"""The event $u^\top z\, v - \text{level}$: the mode's strength crosses `level`."""

    u: Float[Array, " n"]
    v: Float[Array, " n"]
    level: Float[Array, ""]

    def __call__(self, t, z):
        return self.u @ z @ self.v - self.level


def whitened_loss(target):
    """$\\frac12\\|z - Y\\|_F^2$ as `LeastSquares(√n I, √n Y)`."""
    n = target.shape[-1]
    return nf.LeastSquares(jnp.sqrt(n) * jnp.eye(n, dtype=target.dtype), jnp.sqrt(n) * target)


# The solve stops once the mode is past this multiple of the timed level (a boolean event at a
# step end, no root finding): the crossing itself is then found on the dense output.
STOP_BEYOND = 1.5


@eqx.filter_jit
def crossing_solve(z0, loss, kernel, mode, t1, rtol, atol):
    r"""Integrate $\dot z = -K(z)[\nabla\ell(z)]$ with `nf.intrinsic_flow(..., dense=True)`,
    stopping once the mode is past `STOP_BEYOND` × its level, and find the first time
    $u^\top z(t)\, v$ reaches the level with `nf.crossing_time` (bisection on the solver's
    dense interpolant to 1e-12 relative). Returns `(t_cross, crossed, result, num_steps)`."""
    past = ModeCrossing(mode.u, mode.v, STOP_BEYOND * mode.level)
    sol = nf.intrinsic_flow(
        z0, loss, kernel, t1, rtol=rtol, atol=atol, max_steps=MAX_STEPS, dense=True,
        throw=False, event=lambda t, z: past(t, z) >= 0,
    )  # fmt: skip
    strength = lambda z: mode.u @ z @ mode.v
    t, crossed = nf.crossing_time(sol, strength, mode.level, full_output=True)
    return t, crossed, sol.result, sol.stats["num_steps"]


def scalar_crossing(kernel, tol):
    """`cfg ↦ crossing_solve(...)` for one scalar mode (n = 1): target s, start z0, level s/2."""

    def fn(cfg):
        one = jnp.ones(1)
        return crossing_solve(
            cfg["z0"].reshape(1, 1),
            whitened_loss(cfg["s"].reshape(1, 1)),
            kernel(cfg),
            ModeCrossing(one, one, cfg["s"] / 2),
            cfg["t1"],
            tol["rtol"],
            tol["atol"],
        )

    return fn


def balanced_kernel(depth):
    return lambda cfg: Partial(nf.kernels.balanced, depth=depth)


def relaxed_kernel(cfg):
    return Partial(nf.kernels.relaxed_balanced, lambdas=cfg["lam"].reshape(1))


def run_sweep(fn, grid):
    """The crossing times of a sweep, with failures named (never passed off as times)."""
    res = nf.sweep(fn, {k: jnp.asarray(v) for k, v in grid.items()})
    t, crossed, _, steps = res.results
    t, steps = np.asarray(t, float), np.asarray(steps)
    failed = {int(i): r for i, r in res.failed.items()}
    for i in np.flatnonzero(~np.asarray(crossed)):
        failed.setdefault(int(i), f"no crossing before the horizon t1 = {t[i]:g}")
    t[list(failed)] = np.nan
    return t, steps, failed


def balanced_table(args, tol):
    rows = []
    S, Z = np.meshgrid(args.s, args.z0, indexing="ij")
    S, Z = S.ravel(), Z.ravel()
    for L in args.depths:
        theory = np.array([deep_time(s, z, s / 2, L) for s, z in zip(S, Z)])
        fine = np.array([deep_time(s, z, s / 2, L, 2 * QUAD_PANELS) for s, z in zip(S, Z)])
        grid = {"s": S, "z0": Z, "t1": HORIZON * theory}
        t, steps, failed = run_sweep(scalar_crossing(balanced_kernel(L), tol), grid)
        closed = saxe_time(S, Z, S / 2) if L == 2 else np.full_like(S, np.nan)
        for i in range(len(S)):
            rows.append(
                {
                    "depth": L,
                    "s": S[i],
                    "z0": Z[i],
                    "t_measured": t[i],
                    "t_theory": theory[i],
                    "t_closed_form": closed[i],
                    "rel_error": abs(t[i] - theory[i]) / theory[i],
                    "quadrature_change_doubling_panels": abs(fine[i] - theory[i]) / theory[i],
                    "steps": int(steps[i]),
                    "failed": failed.get(i),
                }
            )
    return rows


def imbalanced_table(args, tol):
    S, Z, Lam = (a.ravel() for a in np.meshgrid(args.s, args.z0, args.lambdas, indexing="ij"))
    theory = imbalanced_time(S, Z, S / 2, Lam)
    quad = np.array([imbalanced_time_quadrature(*c) for c in zip(S, Z, S / 2, Lam)])
    grid = {"s": S, "z0": Z, "lam": Lam, "t1": HORIZON * theory}
    t, steps, failed = run_sweep(scalar_crossing(relaxed_kernel, tol), grid)
    return [
        {
            "lambda": Lam[i],
            "s": S[i],
            "z0": Z[i],
            "t_measured": t[i],
            "t_theory": theory[i],
            "closed_form_vs_quadrature": abs(quad[i] - theory[i]) / theory[i],
            "rel_error": abs(t[i] - theory[i]) / theory[i],
            "steps": int(steps[i]),
            "failed": failed.get(i),
        }
        for i in range(len(S))
    ]


def orthogonal(key, n):
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def matrix_problem(args):
    """Target $Y = R\\,\\mathrm{diag}(s)\\,Q^\\top$ (distinct $s$), aligned start
    $z_0 = R\\,\\mathrm{diag}(u_0)\\,Q^\\top$, and a key for the
    frames of a balanced factorization."""
    n = len(args.matrix_s)
    k_r, k_q, k_p = jax.random.split(jax.random.key(args.seed), 3)
    R, Q = orthogonal(k_r, n), orthogonal(k_q, n)
    s = jnp.asarray(args.matrix_s)
    u0 = jnp.full(n, args.matrix_z0)
    return R, Q, s, u0, k_p


def balanced_network(R, Q, u0, depth, key):
    """$U_1 = P_1 D Q^\\top$, $U_j = P_j D P_{j-1}^\\top$, $U_L = R D P_{L-1}^\\top$,
    $D = \\mathrm{diag}(u_0^{1/L})$: balanced ($U_{j+1}^\\top U_{j+1} = U_j U_j^\\top$) with
    product $R\\,\\mathrm{diag}(u_0)\\,Q^\\top$."""
    n = u0.shape[0]
    frames = [Q] + [orthogonal(k, n) for k in jax.random.split(key, depth - 1)] + [R]
    d = u0 ** (1.0 / depth)
    return nf.LinearNetwork(tuple((frames[j + 1] * d) @ frames[j].T for j in range(depth)))


def matrix_table(args, tol):
    R, Q, s, u0, _ = matrix_problem(args)
    z0, loss = (R * u0) @ Q.T, whitened_loss((R * s) @ Q.T)
    rows = []
    for L in args.depths:
        theory = np.array([deep_time(float(a), float(b), float(a) / 2, L) for a, b in zip(s, u0)])

        def fn(cfg, L=L):
            event = ModeCrossing(cfg["u"], cfg["v"], cfg["level"])
            kernel = Partial(nf.kernels.balanced, depth=L)
            return crossing_solve(z0, loss, kernel, event, cfg["t1"], tol["rtol"], tol["atol"])

        grid = {"u": R.T, "v": Q.T, "level": s / 2, "t1": HORIZON * theory}
        t, steps, failed = run_sweep(fn, grid)
        for a in range(len(s)):
            rows.append(
                {
                    "depth": L,
                    "mode": a,
                    "s": float(s[a]),
                    "z0": float(u0[a]),
                    "t_measured": t[a],
                    "t_theory": theory[a],
                    "rel_error": abs(t[a] - theory[a]) / theory[a],
                    "steps": int(steps[a]),
                    "failed": failed.get(a),
                }
            )
    return rows


def parameter_check(args, tol):
    """Intrinsic flow against the parameter flow of the balanced network (one depth): the
    largest |z| difference over the training and the crossing time of the first mode."""
    R, Q, s, u0, k_p = matrix_problem(args)
    L = args.check_depth
    net = balanced_network(R, Q, u0, L, k_p)
    z0, loss = net.lift(), whitened_loss((R * s) @ Q.T)
    event = ModeCrossing(R[:, 0], Q[:, 0], s[0] / 2)
    kernel = Partial(nf.kernels.balanced, depth=L)
    t_intr = float(crossing_solve(z0, loss, kernel, event, 1e9, tol["rtol"], tol["atol"])[0])
    # One grid for both flows: the largest |Δz| over it, and the parameter flow's crossing of
    # mode 0 by linear interpolation of its saved projection (accurate to ~(Δt)², reported).
    ts = jnp.linspace(0.0, 1.5 * t_intr, 601)
    intr = nf.intrinsic_flow(z0, loss, kernel, ts[-1], ts=ts, **tol)
    param = nf.gradient_flow(net, loss, ts[-1], ts=ts, **tol)
    proj = np.asarray(jnp.einsum("i,tij,j->t", R[:, 0], param.zs, Q[:, 0])) - float(s[0]) / 2
    k = int(np.argmax(proj >= 0))
    t_param = float(ts[k - 1] - proj[k - 1] * (ts[k] - ts[k - 1]) / (proj[k] - proj[k - 1]))
    theory = deep_time(float(s[0]), float(u0[0]), float(s[0]) / 2, L)
    return {
        "depth": L,
        "horizon": float(ts[-1]),
        "max_abs_z_difference": float(jnp.max(jnp.abs(param.zs - intr.zs))),
        "max_abs_z": float(jnp.max(jnp.abs(intr.zs))),
        "mode0_t_parameter_flow_linear_interp_601": t_param,
        "mode0_t_intrinsic_flow": float(t_intr),
        "mode0_t_theory": theory,
        "steps_parameter_flow": int(param.stats["num_steps"]),
        "steps_intrinsic_flow": int(intr.stats["num_steps"]),
    }


# --- command line, summary, figure ---------------------------------------------------------


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--s",
        type=positive,
        nargs="+",
        default=[0.5, 1.0, 2.0, 4.0],
        help="target strengths s of the scalar table",
    )
    p.add_argument(
        "--z0",
        type=positive,
        nargs="+",
        default=[1e-2, 1e-4, 1e-6],
        help="initial strengths (each < s/2)",
    )
    p.add_argument("--depths", type=integer(2), nargs="+", default=[2, 3, 4, 6])
    p.add_argument(
        "--lambdas",
        type=finite,
        nargs="+",
        default=[0.0, 0.5, 2.0, -2.0],
        help="imbalances λ of the two-layer imbalanced table",
    )
    p.add_argument(
        "--matrix-s",
        type=positive,
        nargs="+",
        default=[3.0, 2.0, 1.0, 0.5],
        help="distinct target singular values of the full matrix case",
    )
    p.add_argument("--matrix-z0", type=positive, default=1e-3)
    p.add_argument(
        "--check-depth", type=integer(2), default=3, help="depth of the parameter-flow cross-check"
    )
    p.add_argument("--rtol", type=tolerance, default=1e-12)
    p.add_argument("--atol", type=tolerance, default=1e-16)
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--out", type=Path, default=Path("results/learning_times"))
    args = p.parse_args(argv)
    check_out(p, args.out)
    for flag in ("s", "z0", "depths", "lambdas", "matrix_s"):
        distinct(p, "--" + flag.replace("_", "-"), getattr(args, flag))
    if max(args.z0) >= min(args.s) / 2:
        p.error(
            f"argument --z0: every start must lie below s/2 = {min(args.s) / 2:g} (the level "
            f"whose crossing is timed); got {max(args.z0):g}"
        )
    if args.matrix_z0 >= min(args.matrix_s) / 2:
        p.error(f"argument --matrix-z0: must be < min(--matrix-s)/2; got {args.matrix_z0:g}")
    return args


def _clean(rows):
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in rows
    ]


def _worst(rows):
    errs = [r["rel_error"] for r in rows if r["failed"] is None]
    failed = sum(r["failed"] is not None for r in rows)
    return {"max_rel_error": max(errs) if errs else None, "failed": failed, "count": len(rows)}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    tol = dict(rtol=args.rtol, atol=args.atol)
    parts, seconds = {}, {}
    for name, f in (
        ("balanced", balanced_table),
        ("imbalanced", imbalanced_table),
        ("matrix", matrix_table),
        ("parameter_check", parameter_check),
    ):
        t0 = time.time()
        parts[name] = f(args, tol)
        seconds[name] = time.time() - t0
        log.info("%s done (%.1f s)", name, seconds[name])
    by_depth = {
        str(L): _worst([r for r in parts["balanced"] if r["depth"] == L]) for L in args.depths
    }
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "headline": {
            "balanced_by_depth": by_depth,
            "imbalanced": _worst(parts["imbalanced"]),
            "matrix": _worst(parts["matrix"]),
            "parameter_vs_intrinsic_max_abs_z": parts["parameter_check"]["max_abs_z_difference"],
        },
        "balanced": _clean(parts["balanced"]),
        "imbalanced": _clean(parts["imbalanced"]),
        "matrix": _clean(parts["matrix"]),
        "parameter_check": parts["parameter_check"],
        "seconds": seconds,
        "seconds_total": time.time() - start,
    }
    atomic_write_json(args.out / "summary.json", summary)
    plot(args, summary)
    heads = [(f"depth {L}", h) for L, h in by_depth.items()]
    heads += [(name, summary["headline"][name]) for name in ("imbalanced", "matrix")]
    for name, h in heads:
        log.info(
            "%s: max relative error %.2e (%d failed)", name, h["max_rel_error"] or 0, h["failed"]
        )
    log.info("results in %s (%.1f s)", args.out, summary["seconds_total"])


def plot(args, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for j, L in enumerate(args.depths):
        rows = [r for r in summary["balanced"] if r["depth"] == L and r["failed"] is None]
        ax.loglog(
            [r["t_theory"] for r in rows],
            [r["t_measured"] for r in rows],
            "o",
            color=f"C{j}",
            label=f"balanced, L = {L}",
        )
        rows = [r for r in summary["matrix"] if r["depth"] == L and r["failed"] is None]
        ax.loglog(
            [r["t_theory"] for r in rows],
            [r["t_measured"] for r in rows],
            "x",
            color=f"C{j}",
            ms=9,
            label=f"matrix modes, L = {L}",
        )
    rows = [r for r in summary["imbalanced"] if r["failed"] is None]
    ax.loglog(
        [r["t_theory"] for r in rows],
        [r["t_measured"] for r in rows],
        "k+",
        label="two layers, imbalanced",
    )
    lim = np.array(ax.get_xlim())
    ax.loglog(lim, lim, "k:", lw=1)
    ax.set_xlabel("theoretical time to s/2")
    ax.set_ylabel("measured crossing time")
    ax.legend(fontsize=7)
    ax = axes[1]
    tables = [
        ("balanced", summary["balanced"]),
        ("imbalanced", summary["imbalanced"]),
        ("matrix", summary["matrix"]),
    ]
    for j, (name, rows) in enumerate(tables):
        err = [max(r["rel_error"], 1e-17) for r in rows if r["failed"] is None]
        ax.semilogy(np.full(len(err), j) + np.linspace(-0.2, 0.2, len(err)), err, "o", ms=3)
    ax.set_xticks(range(len(tables)), [n for n, _ in tables])
    ax.set_ylabel("|t_measured − t_theory| / t_theory")
    ax.set_title(f"rtol = {args.rtol:g}")
    fig.tight_layout()
    atomic_savefig(fig, args.out / "learning_times.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
