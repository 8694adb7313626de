"""The node_flow side of the benchmark: the parameter flow, the intrinsic flow (also the
reference), the vector field alone, the neural-ODE training flow and the criterion."""

import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from _problem import REF_TOL, T1

import node_flow as nf


SOLVERS = {"dopri8": diffrax.Dopri8, "tsit5": diffrax.Tsit5}


def _network_and_loss(prob):
    L, n = prob["L"], prob["n"]
    # A = L (U − I): the residual parametrization has the flow U' = −(1/L) ∇_U L exactly.
    net = nf.ResidualLinearNetwork(jnp.asarray(L * (prob["U0"] - np.eye(n))))
    return net, nf.LeastSquares(jnp.asarray(prob["X"]), jnp.asarray(prob["Y"]))


def param_solver(prob, solver="dopri8"):
    """`solve(tol, t1) -> (z(t1), nfev)` for `nf.gradient_flow` (one compilation per shape)."""
    net, loss = _network_and_loss(prob)
    ode_solver = SOLVERS[solver]()

    def solve(tol, t1=T1):
        sol = nf.gradient_flow(net, loss, t1, rtol=tol, atol=tol, solver=ode_solver)
        return np.asarray(sol.zs)[-1], int(sol.stats["num_vf_evals"])

    return solve


def intrinsic_solver(prob, solver="dopri8"):
    r"""`solve(tol, t1)` for the balanced intrinsic flow $\dot z = -\frac1L K_L(z)[\nabla\ell]$:
    exact for $z$ here, since $U_i = \exp(S/L)$ are equal and symmetric ($C_j = 0$)."""
    L = prob["L"]
    _, loss = _network_and_loss(prob)
    z0 = jnp.asarray(prob["z0"])
    kernel = lambda z, G: nf.kernels.balanced(z, G, L)  # one object: compiled once
    ode_solver = SOLVERS[solver]()

    def solve(tol, t1=T1):
        sol = nf.intrinsic_flow(
            z0, loss, kernel, t1, rtol=tol, atol=tol, time_scale=1.0 / L, solver=ode_solver
        )
        return np.asarray(sol.zs)[-1], int(sol.stats["num_vf_evals"])

    return solve


def reference(prob, check_param: bool):
    """z(T1) by the intrinsic flow at rtol = atol = 1e-12 (Dopri8); optionally checked
    against the parameter flow at the same tolerance."""
    t = time.perf_counter()
    z_ref, nfev = intrinsic_solver(prob)(REF_TOL)
    out = {"z_ref": z_ref, "ref_nfev": nfev, "ref_seconds": time.perf_counter() - t}
    if check_param:
        t = time.perf_counter()
        z_par, nfev = param_solver(prob)(REF_TOL)
        out["param_ref_rel_diff"] = float(np.linalg.norm(z_par - z_ref) / np.linalg.norm(z_ref))
        out["param_ref_nfev"] = nfev
        out["param_ref_seconds"] = time.perf_counter() - t
    return out


def vector_field_rate(prob, min_seconds=0.3):
    """Seconds per evaluation of the parameter-flow vector field alone (the preconditioned
    gradient `nf.gradient_flow` integrates), `k` evaluations inside one jitted loop so that
    dispatch does not count."""
    net, loss = _network_and_loss(prob)
    L = prob["L"]
    # `reverse_mode()`: the twin `gradient_flow` differentiates (fused reverse pass).
    grad = jax.grad(lambda A: loss(nf.ResidualLinearNetwork(A).reverse_mode().lift()))

    def evals(A, k):
        body = lambda i, acc: acc + grad(A + 1e-300 * acc)
        return jax.lax.fori_loop(0, k, body, jnp.zeros_like(A)) * L

    run = jax.jit(evals, static_argnums=1)
    k = 1
    while True:
        run(net.A, k).block_until_ready()
        t = time.perf_counter()
        run(net.A, k).block_until_ready()
        seconds = time.perf_counter() - t
        if seconds >= min_seconds or k >= 4096:
            break
        k *= 4
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run(net.A, k).block_until_ready()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / k


def neural_ode_costs(ms, n=4, t1=1.0, tol=1e-8, reps=3):
    """The L² training flow of a relaxed balanced weight function on m cells: compile
    time, seconds per solve (median of `reps`) and vector-field evaluations, per m."""
    key = jax.random.key(0)
    rng = np.random.default_rng(1)
    loss = nf.LeastSquares(rng.standard_normal((n, 2 * n)), rng.standard_normal((n, 2 * n)))
    rows = []
    for m in ms:
        node = nf.neural_ode.relaxed_balanced(key, n, m, lambda s: jnp.cos(2 * jnp.pi * s))
        solve = lambda: nf.gradient_flow(node, loss, t1, rtol=tol, atol=tol)
        t = time.perf_counter()
        sol = solve()
        first = time.perf_counter() - t
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            sol = solve()
            jax.block_until_ready(sol.zs)
            times.append(time.perf_counter() - t)
        seconds = float(np.median(times))
        nfev = int(sol.stats["num_vf_evals"])
        rows.append(
            {
                "m": m,
                "n": n,
                "seconds": seconds,
                "compile_s": first - seconds,
                "nfev": nfev,
                "ms_per_eval": 1e3 * seconds / nfev,
                "tol": tol,
            }
        )
    return rows


def criterion_costs(widths_n, seed=0):
    """`criterion.kernel_inclusion` for Gaussian deep linear networks (n, n, n): seconds
    against the number of parameters D = 2n²."""
    from node_flow import criterion
    from node_flow.criterion import liftings

    rng = np.random.default_rng(seed)
    rows = []
    for n in widths_n:
        phi = liftings.deep_linear((n, n, n))
        theta = tuple(jnp.asarray(rng.standard_normal((n, n))) for _ in range(2))
        t = time.perf_counter()
        report = criterion.kernel_inclusion(phi, theta)
        seconds = time.perf_counter() - t
        rows.append(
            {
                "n": n,
                "D": int(report.num_params),
                "seconds": seconds,
                "laws": int(report.lie.num_conservation_laws),
                "laws_expected": n * (n + 1) // 2,
            }
        )
    return rows


def _median_seconds(fn, *args, reps=3):
    """Median wall time of `reps` calls of an already compiled `fn` (results awaited)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _compiled_bytes(fn, *args):
    """XLA's own accounting of a compiled function: argument, output and temporary bytes."""
    mem = fn.lower(*args).compile().memory_analysis()
    if mem is None:
        return {}
    return {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
    }


def scale_costs(n=1000, observed=100_000, depth=3, rank=5, scale=1e-3, seed=0, reps=3):
    r"""One vector-field evaluation of the two flows of a balanced depth-`depth` network on an
    $n \times n$ completion problem with `observed` entries: the intrinsic flow
    $\dot z = -K_L(z)[\nabla\ell(z)]$ (`nf.kernels.balanced`: an SVD of $z$, then four
    $n \times n$ products) and the parameter flow (the gradient through $U_L \cdots U_1$).
    Seconds per evaluation (median of `reps`, compiled), the SVD and one product timed alone
    in the same process, and XLA's memory accounting of each compiled function."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(rank)
    flat = rng.choice(n * n, size=observed, replace=False)
    rows, cols = np.divmod(flat, n)
    loss = nf.MatrixCompletion(rows, cols, truth[rows, cols], (n, n))
    net = nf.init.balanced(jax.random.key(seed), (n,) * (depth + 1), scale)
    z0 = net.lift()
    params = net.weights

    intrinsic = jax.jit(lambda z: -nf.kernels.balanced(z, jax.grad(loss)(z), depth))
    parameter = jax.jit(jax.grad(lambda Us: loss(nf.LinearNetwork(Us).reverse_mode().lift())))
    svd = jax.jit(lambda z: jnp.linalg.svd(z))
    matmul = jax.jit(lambda a, b: a @ b)
    gradient = jax.jit(jax.grad(loss))
    b = jnp.asarray(rng.standard_normal((n, n)))
    cases = {
        "intrinsic": (intrinsic, (z0,)),
        "parameter": (parameter, (params,)),
        "svd": (svd, (z0,)),
        "gemm": (matmul, (z0, b)),
        "loss_gradient": (gradient, (z0,)),
    }
    out = {"n": n, "observed": observed, "depth": depth, "rank": rank, "scale": scale}
    for name, (fn, args) in cases.items():
        jax.block_until_ready(fn(*args))  # compile
        out[name] = {"seconds": _median_seconds(fn, *args, reps=reps), **_compiled_bytes(fn, *args)}
    gemm_s = out["gemm"]["seconds"]
    out["gemm"]["gflops"] = 2 * n**3 / gemm_s / 1e9
    for name in ("intrinsic", "parameter", "svd", "loss_gradient"):
        out[name]["gemms"] = out[name]["seconds"] / gemm_s
    # Where the intrinsic evaluation goes: the SVD, and the rest (4 products + gradient + W).
    out["intrinsic"]["svd_fraction"] = out["svd"]["seconds"] / out["intrinsic"]["seconds"]
    # Check the kernel against its sum form K[G] = Σ_j (zzᵀ)^{(L−j)/L} G (zᵀz)^{(j−1)/L}
    # through the eigendecompositions of zzᵀ and zᵀz (an independent route), on this z.
    G = np.asarray(gradient(z0))
    zn = np.asarray(z0)
    ev_l, Ql = np.linalg.eigh(zn @ zn.T)
    ev_r, Qr = np.linalg.eigh(zn.T @ zn)
    power = lambda ev, Q, p: (Q * np.clip(ev, 0, None) ** p) @ Q.T
    K = sum(
        power(ev_l, Ql, (depth - j) / depth) @ G @ power(ev_r, Qr, (j - 1) / depth)
        for j in range(1, depth + 1)
    )
    K_nf = -np.asarray(intrinsic(z0))
    out["intrinsic"]["rel_err_vs_sum_form"] = float(np.linalg.norm(K_nf - K) / np.linalg.norm(K))
    return out
