"""The peers: SciPy `solve_ivp` with a hand-written NumPy gradient, and torchdiffeq with
the vector field by autograd. Each runs in its own process (see `_worker.py`): BLAS thread
pools of different libraries spin-wait and starve each other when mixed in one process."""

import numpy as np
from _problem import T1


def numpy_gradient(U: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    r"""$\nabla_{U_k} L = P_{>k}^\top G P_{<k}^\top$ with $G = (zX - Y)X^\top / N$:
    prefix and suffix products by two sequential passes, then two batched products."""
    L, n, _ = U.shape
    prefix = np.empty_like(U)  # P_{<k} = U_{k-1} ⋯ U_1
    suffix = np.empty_like(U)  # P_{>k} = U_L ⋯ U_{k+1}
    P = np.eye(n)
    for k in range(L):
        prefix[k] = P
        P = U[k] @ P
    G = (P @ X - Y) @ X.T / X.shape[1]
    Q = np.eye(n)
    for k in range(L - 1, -1, -1):
        suffix[k] = Q
        Q = Q @ U[k]
    return np.matmul(np.matmul(suffix.transpose(0, 2, 1), G), prefix.transpose(0, 2, 1))


def scipy_solver(prob: dict, method: str):
    """`solve(tol) -> (z(T1), nfev)` with `scipy.integrate.solve_ivp(method=method)`."""
    from scipy.integrate import solve_ivp

    L, n, X, Y = prob["L"], prob["n"], prob["X"], prob["Y"]
    y0 = prob["U0"].ravel()

    def f(t, y):
        return (-numpy_gradient(y.reshape(L, n, n), X, Y) / L).ravel()

    def solve(tol, t1=T1):
        sol = solve_ivp(f, (0.0, t1), y0, method=method, rtol=tol, atol=tol)
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp({method}) failed: {sol.message}")
        U = sol.y[:, -1].reshape(L, n, n)
        z = U[0]
        for Uk in U[1:]:
            z = Uk @ z
        return z, sol.nfev

    return solve


def torchdiffeq_solver(prob: dict, threads: int):
    """`solve(tol) -> (z(T1), nfev)` with `torchdiffeq.odeint(method="dopri5")`; the vector
    field is autograd through the sequential product, as one would write it."""
    import torch
    import torchdiffeq

    torch.set_num_threads(threads)
    L = prob["L"]
    X = torch.tensor(prob["X"], dtype=torch.float64)
    Y = torch.tensor(prob["Y"], dtype=torch.float64)
    y0 = torch.tensor(prob["U0"], dtype=torch.float64)
    N = X.shape[1]
    count = [0]

    def product(U):
        z = U[0]
        for k in range(1, L):
            z = U[k] @ z
        return z

    def f(t, y):
        count[0] += 1
        with torch.enable_grad():
            U = y.detach().requires_grad_(True)
            loss = ((product(U) @ X - Y) ** 2).sum() / (2 * N)
            (grad,) = torch.autograd.grad(loss, U)
        return -grad / L

    def solve(tol, t1=T1):
        count[0] = 0
        t = torch.tensor([0.0, t1], dtype=torch.float64)
        with torch.no_grad():
            ys = torchdiffeq.odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5")
            z = product(ys[-1])
        return z.numpy(), count[0]

    return solve


def jax_diffrax_solver(prob: dict):
    """`solve(tol) -> (z(T1), nfev)`: the solve a JAX user would write — the sequential
    product by `lax.scan`, the vector field by `jax.grad`, `diffrax.Tsit5` with a PID
    controller at rtol = atol = tol, `jax.jit` on the whole solve (one compilation; the
    tolerance is traced). Float64 (the worker enables it before calling)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    L = prob["L"]
    X, Y = jnp.asarray(prob["X"]), jnp.asarray(prob["Y"])
    U0 = jnp.asarray(prob["U0"])

    def product(U):
        return jax.lax.scan(lambda z, u: (u @ z, None), U[0], U[1:])[0]

    def loss(U):
        return jnp.sum((product(U) @ X - Y) ** 2) / (2 * X.shape[1])

    @jax.jit
    def run(U0, tol, t1):
        term = diffrax.ODETerm(lambda t, U, args: -jax.grad(loss)(U) / L)
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            0.0,
            t1,
            None,
            U0,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=100_000,
        )
        return product(sol.ys[0]), sol.stats["num_steps"]

    def solve(tol, t1=T1):
        z, steps = run(U0, jnp.asarray(tol), jnp.asarray(t1, dtype=U0.dtype))
        # Tsit5 is FSAL: 6 new stages per step, f(y0) once for the first stage, and two
        # evaluations in diffrax's initial step selection (Hairer–Nørsett–Wanner).
        return np.asarray(z), 6 * int(steps) + 3

    return solve
