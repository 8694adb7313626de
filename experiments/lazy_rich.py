r"""Lazy against rich training of two-layer relaxed balanced networks (`make lazy-rich`).

Two-layer networks $z = U_2 U_1$ with $U_2^\top U_2 - U_1 U_1^\top = \lambda I$ (Tarmoun et al.
2021; Kunin et al. 2024) follow the intrinsic flow $\dot z = -K_\lambda(z)[\nabla\ell(z)]$ of
`kernels.relaxed_balanced`, with $K_\lambda(z)[G] = |\lambda| G + (zz^\top G + G z^\top z)/|\lambda|
+ O(|\lambda|^{-3})$. In the rescaled time $\tau = |\lambda| t$ the flow tends, as $|\lambda|$
grows with $z_0$ fixed, to its linearization at $z_0$ (the neural-tangent prediction)
$z_{\rm lin}' = -K_\lambda(z_0)[\nabla\ell(z_{\rm lin})]/|\lambda|$, solved in closed form for
$\ell = \frac12\|z - Y\|_F^2$: with $M$ the $n^2 \times n^2$ matrix of $K_\lambda(z_0)/|\lambda|$
(symmetric positive definite), $\operatorname{vec}(z_{\rm lin}(\tau) - Y) = e^{-M\tau}
\operatorname{vec}(z_0 - Y)$ by its eigendecomposition. Measured against $|\lambda|$: the distance
$\sup_\tau \|z(\tau) - z_{\rm lin}(\tau)\|_F$ (expected slope $-2$), and the kernel movement
$\sup_\tau \|K(z(\tau)) - K(z_0)\|_2 / \|K(z_0)\|_2$. Checks on one $\lambda$: the parameter flow
of the factors, and the exact Riccati solution $P(t) = e^{At}R_0(I + R_0^\top K(t) R_0)^{-1}
R_0^\top e^{At}$, $R = [U_2; U_1^\top]$, $A = [[\frac{\lambda}{2}I, Y], [Y^\top,
-\frac{\lambda}{2}I]]$, $K(t) = \int_0^t e^{2As}ds$ (REFERENCES).

Run: `make lazy-rich`, or `python experiments/lazy_rich.py --help`.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _study import check_out, distinct, fit_loglog, integer, positive, tolerance  # noqa: E402
from jax.tree_util import Partial  # noqa: E402

import node_flow as nf  # noqa: E402
from node_flow._io import atomic_savefig, atomic_write_json  # noqa: E402


log = logging.getLogger("lazy_rich")

# The slope is fitted over |λ| ≥ 4 (as in the measurement, |λ| = 4…64): the expansion
# of K_λ is in powers of ‖z‖²/λ², and with ‖z‖ ≈ 1.4 along the flow its next term is a ≲ 15 %
# correction from |λ| = 4 on. Every pairwise slope is reported as well, smaller λ included.
FIT_FROM_LAMBDA = 4.0


def problem(n, scale, seed):
    """A fixed start $z_0$ (Gaussian, entries of size `scale`/√n) and target $Y$."""
    k0, ky = jax.random.split(jax.random.key(seed))
    z0 = scale * jax.random.normal(k0, (n, n)) / np.sqrt(n)
    Y = jax.random.normal(ky, (n, n)) / np.sqrt(n)
    return z0, Y


def whitened_loss(Y):
    """$\\frac12\\|z - Y\\|_F^2$ as `LeastSquares(√n I, √n Y)`."""
    n = Y.shape[0]
    return nf.LeastSquares(jnp.sqrt(n) * jnp.eye(n, dtype=Y.dtype), jnp.sqrt(n) * Y)


@jax.jit
def kernel_matrix(z, lam):
    r"""The $n^2 \times n^2$ matrix of $G \mapsto K_\lambda(z)[G]$ (row-major vec)."""
    n = z.shape[0]
    basis = jnp.eye(n * n, dtype=z.dtype).reshape(n * n, n, n)
    lam = jnp.reshape(lam, (1,))
    cols = jax.vmap(lambda E: nf.kernels.relaxed_balanced(z, E, lam).reshape(-1))(basis)
    return cols.T


_kernel_matrices = jax.jit(jax.vmap(kernel_matrix, in_axes=(0, None)))


def linearized(z0, Y, lam, taus):
    r"""$z_{\rm lin}(\tau) = Y + \operatorname{mat}(e^{-M\tau}\operatorname{vec}(z_0 - Y))$,
    $M = K_\lambda(z_0)/|\lambda|$, by the eigendecomposition of the symmetric $M$."""
    M = np.asarray(kernel_matrix(z0, lam)) / abs(lam)
    M = 0.5 * (M + M.T)
    mu, V = np.linalg.eigh(M)
    e0 = V.T @ np.asarray(z0 - Y).reshape(-1)
    e = (V[None] @ (np.exp(-mu[None, :] * np.asarray(taus)[:, None]) * e0)[..., None])[..., 0]
    return np.asarray(Y)[None] + e.reshape(len(taus), *z0.shape)


def factors(z0, lam):
    r"""$U_1 = P\sqrt{a}\,Y^\top$, $U_2 = X\sqrt{a + \lambda}\,P^\top$ with $z_0 = X \sigma Y^\top$,
    $a(a + \lambda) = \sigma^2$ ($P = I$): $U_2 U_1 = z_0$ and $U_2^\top U_2 - U_1 U_1^\top =
    \lambda I$."""
    X, s, Yt = jnp.linalg.svd(z0)
    a = 0.5 * (-lam + jnp.sqrt(lam**2 + 4 * s**2))
    return Yt * jnp.sqrt(a)[:, None], X * jnp.sqrt(a + lam)[None, :]


def riccati(U1, U2, Y, lam, ts):
    r"""$W(t)$, the top-right block of the exact Riccati solution (module docstring)."""
    n = Y.shape[0]
    R0 = np.concatenate([np.asarray(U2), np.asarray(U1).T])
    eye = np.eye(n)
    A = np.block([[lam / 2 * eye, np.asarray(Y)], [np.asarray(Y).T, -lam / 2 * eye]])
    mu, Phi = np.linalg.eigh(A)
    out = []
    for t in np.asarray(ts):
        eAt = (Phi * np.exp(mu * t)) @ Phi.T
        # ∫_0^t e^{2μs} ds = t·e^{μt}·sinhc(μt): no cancellation at small μt
        x = mu * t
        w = t * np.exp(x) * np.where(x == 0, 1.0, np.sinh(x) / np.where(x == 0, 1.0, x))
        K = (Phi * w) @ Phi.T
        inner = np.linalg.solve(np.eye(R0.shape[1]) + R0.T @ K @ R0, R0.T @ eAt)
        P = eAt @ R0 @ inner
        out.append(P[:n, n:])
    return np.array(out)


def lazy_flow(z0, Y, tol):
    """`cfg ↦ FlowSolution` of the intrinsic flow in rescaled time τ = |λ| t."""
    loss = whitened_loss(Y)

    def fn(cfg):
        lam = cfg["lam"]
        kernel = Partial(nf.kernels.relaxed_balanced, lambdas=lam.reshape(1))
        T = cfg["taus"][-1]
        return nf.intrinsic_flow(
            z0, loss, kernel, T, ts=cfg["taus"], time_scale=1 / jnp.abs(lam), throw=False, **tol
        )

    return fn


def measure(z0, Y, lambdas, taus, tol):
    """Per λ: the distance to the linearization and the kernel movement (sup over τ)."""
    grid = {"lam": np.asarray(lambdas, float), "taus": np.tile(taus, (len(lambdas), 1))}
    res = nf.sweep(lazy_flow(z0, Y, tol), {k: jnp.asarray(v) for k, v in grid.items()})
    zs = np.asarray(res.results.zs)
    rows = []
    for i, lam in enumerate(lambdas):
        lin = linearized(z0, Y, lam, taus)
        K0 = np.asarray(kernel_matrix(z0, lam))
        Kt = np.asarray(_kernel_matrices(jnp.asarray(zs[i]), lam))
        rows.append(
            {
                "lambda": float(lam),
                "distance": float(np.max(np.linalg.norm(zs[i] - lin, axis=(-2, -1)))),
                "kernel_movement": float(
                    np.max(np.linalg.norm(Kt - K0[None], ord=2, axis=(-2, -1)))
                    / np.linalg.norm(K0, ord=2)
                ),
                "final_loss": float(np.asarray(res.results.losses)[i, -1]),
                "steps": int(np.asarray(res.results.stats["num_steps"])[i]),
                "failed": res.failed.get(i),
            }
        )
    return rows, zs


def checks(z0, Y, lam, T, tol):
    """Intrinsic flow (original time) against the parameter flow and the Riccati solution."""
    ts = jnp.linspace(0.0, T, 21)
    loss = whitened_loss(Y)
    kernel = Partial(nf.kernels.relaxed_balanced, lambdas=jnp.array([lam]))
    intr = nf.intrinsic_flow(z0, loss, kernel, T, ts=ts, **tol)
    U1, U2 = factors(z0, lam)
    param = nf.gradient_flow(nf.LinearNetwork((U1, U2)), loss, T, ts=ts, **tol)
    exact = riccati(U1, U2, Y, lam, ts)
    return {
        "lambda": lam,
        "T": T,
        "max_abs_z": float(jnp.max(jnp.abs(intr.zs))),
        "intrinsic_vs_parameter": float(jnp.max(jnp.abs(intr.zs - param.zs))),
        "intrinsic_vs_riccati": float(np.max(np.abs(np.asarray(intr.zs) - exact))),
        "parameter_vs_riccati": float(np.max(np.abs(np.asarray(param.zs) - exact))),
    }


def parse_args(argv=None):
    """The flags, each checked (and `--out` found writable) before anything is computed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=integer(1), default=3)
    p.add_argument(
        "--lambdas",
        type=positive,
        nargs="+",
        default=[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        help="the imbalances λ > 0 (the flow depends on |λ| in rescaled time)",
    )
    p.add_argument("--scale", type=positive, default=1.0, help="size of z0 (entries ~ scale/√n)")
    p.add_argument("--tau", type=positive, default=8.0, help="horizon in rescaled time |λ|t")
    p.add_argument("--saves", type=integer(2), default=81)
    p.add_argument("--check-lambda", type=positive, default=2.0)
    p.add_argument("--check-T", type=positive, default=3.0)
    p.add_argument("--rtol", type=tolerance, default=1e-11)
    p.add_argument("--atol", type=tolerance, default=1e-13)
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--out", type=Path, default=Path("results/lazy_rich"))
    args = p.parse_args(argv)
    check_out(p, args.out)
    distinct(p, "--lambdas", args.lambdas)
    if len(args.lambdas) < 2:
        p.error("argument --lambdas: a slope needs at least two values")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    start = time.time()
    tol = dict(rtol=args.rtol, atol=args.atol)
    z0, Y = problem(args.width, args.scale, args.seed)
    lambdas = sorted(args.lambdas)
    taus = np.linspace(0.0, args.tau, args.saves)
    rows, _ = measure(z0, Y, lambdas, taus, tol)
    d = [r["distance"] for r in rows]
    m = [r["kernel_movement"] for r in rows]
    pairwise = [
        float(np.log(d[i + 1] / d[i]) / np.log(lambdas[i + 1] / lambdas[i]))
        for i in range(len(lambdas) - 1)
    ]
    large = [i for i, lam in enumerate(lambdas) if lam >= FIT_FROM_LAMBDA]
    large = large if len(large) >= 2 else list(range(len(lambdas)))
    fit = fit_loglog([lambdas[i] for i in large], [d[i] for i in large])
    t_measure = time.time() - start
    check = checks(z0, Y, args.check_lambda, args.check_T, tol)
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "z0": np.asarray(z0).tolist(),
        "Y": np.asarray(Y).tolist(),
        "rows": rows,
        "headline": {
            "pairwise_distance_slopes": pairwise,
            "fit_from_lambda": FIT_FROM_LAMBDA,
            "fit_large_lambda": fit,
            "kernel_movement_fit": fit_loglog(lambdas, m),
            "expected_distance_slope": -2.0,
            "check": check,
        },
        "seconds_sweep": t_measure,
        "seconds_total": time.time() - start,
    }
    atomic_write_json(args.out / "summary.json", summary)
    plot(args, summary)
    log.info("pairwise distance slopes: %s", ", ".join(f"{s:.3f}" for s in pairwise))
    log.info("fit over λ ≥ %g: %.3f ± %.3f", FIT_FROM_LAMBDA, fit["slope"], fit["stderr"])
    log.info("checks: %s", check)
    log.info("results in %s (%.1f s)", args.out, summary["seconds_total"])


def plot(args, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    lam = np.array([r["lambda"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    start = int(np.searchsorted(lam, FIT_FROM_LAMBDA))
    start = start if start <= len(lam) - 2 else 0
    # The fits of summary.json: the distance over |λ| ≥ FIT_FROM_LAMBDA, the movement over all.
    fitted = (("distance", "sup‖z − z_lin‖", start), ("kernel_movement", "kernel movement", None))
    for key, label, fit_from in fitted:
        nf.plot.convergence(lam, [r[key] for r in rows], ax=ax, label=label, fit_from=fit_from)
    pairwise = summary["headline"]["pairwise_distance_slopes"]
    ax.text(
        0.03,
        0.03,
        "pairwise slopes: " + ", ".join(f"{s:.2f}" for s in pairwise),
        transform=ax.transAxes,
        fontsize=7,
    )
    ax.set_xlabel("|λ|")
    ax.set_ylabel("in rescaled time |λ|t")
    ax.set_title(f"lazy limit, n = {args.width}, τ ≤ {args.tau:g}")
    fig.tight_layout()
    atomic_savefig(fig, args.out / "lazy_rich.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
