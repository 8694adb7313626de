r"""A persistent compilation cache, so that a second run of a study reuses compiled flows.

Turned on only by calling [`node_flow.enable_compilation_cache`][] (the project's studies,
benchmarks and tests do); importing `node_flow` changes no JAX setting.
"""

import os
from pathlib import Path
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache


ENV_VAR = "NODE_FLOW_CACHE_DIR"
_OFF = ("off", "0", "false", "no", "none")


def cache_dir(path: Any = None) -> Path | None:
    """The folder [`node_flow.enable_compilation_cache`][] would use, or `None` when off
    (see there for the order: `$NODE_FLOW_CACHE_DIR`, then `path`, then the user cache)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return None if env.lower() in _OFF else Path(env).expanduser()
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"enable_compilation_cache: `path` must be a folder (str or os.PathLike) or "
                f"None; got {type(path).__name__} {path!r}."
            )
        return Path(path).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "node_flow" / "jax"


def enable_compilation_cache(path: Any = None, *, min_compile_seconds: Any = 0.0) -> Path | None:
    r"""Keep JAX's compiled programs on disk, so that later processes skip compilation.

    A flow's first call in a process costs 1–3 s of tracing and XLA compilation per new
    shape (tens of seconds for a batch of neural-ODE flows); with the cache, a later process
    with the same program loads the executable instead of compiling it (tracing still
    happens). Call it once, **before** the first compilation (it also resets JAX's
    in-process cache state, so a later call takes effect).

    **Where:** the environment variable `NODE_FLOW_CACHE_DIR`, when set, wins — a folder, or
    `off` (also `0`, `false`, `no`, `none`) to disable the cache — so that any script's cache
    can be moved or turned off from outside; else `path`; else
    `$XDG_CACHE_HOME/node_flow/jax` (default `~/.cache/node_flow/jax`). The project's
    studies, benchmarks and tests pass `<repository>/.cache/jax`, which `make clean` removes.

    **Safety:** an entry is keyed on a hash of the compiled program's HLO together with the
    jaxlib version, the backend and device kind, the XLA flags and the compile options. A
    changed model, loss, shape, dtype or library version is a different key, so a stale
    entry is never loaded; an unreadable (corrupt, truncated) entry makes JAX warn and
    compile afresh. Deleting the folder at any time is safe.

    **Not stored:** JAX does not write a program that contains a host callback. node_flow's
    flows hold none (they save at `ts` themselves, pass their first step through the
    controller, and report a failed check inside the vector field as a result code), so
    the cache stores them; a flow is compiled afresh in each process when it holds one all
    the same: run with `throw=True` inside the caller's `jit` (its outputs are guarded by
    `eqx.error_if`), with a progress meter, with a traced `dt0` and a constant step size
    (diffrax checks its sign), or with a loss that calls `jax.debug.print`/`callback`.
    Tracing is never cached: a warm start still traces every flow once (measured in the
    Benchmarks page, "Warm starts").

    **Arguments:**

    - `path`: the cache folder, `str` or `os.PathLike` (created if missing), used when
      `NODE_FLOW_CACHE_DIR` is not set.
    - `min_compile_seconds`: programs compiling faster than this are not written (JAX's
      default is 1 s; flows of small networks compile in less on a fast machine, so the
      default here, 0, caches everything).

    **Returns:** the cache folder in use, or `None` when the cache is off.

    **Raises:** `TypeError` for a `path` that is not a folder name, `ValueError` for a
    negative `min_compile_seconds` or a folder that cannot be created or written.
    """
    if isinstance(min_compile_seconds, bool) or not (
        isinstance(min_compile_seconds, int | float) and min_compile_seconds >= 0
    ):
        raise ValueError(
            "enable_compilation_cache: `min_compile_seconds` must be a number ≥ 0; got "
            f"{min_compile_seconds!r}."
        )
    folder = cache_dir(path)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"enable_compilation_cache: cannot use the cache folder {str(folder)!r} ({e}); "
            f"pass a writable folder, or set {ENV_VAR}=off to disable the cache."
        ) from None
    # A user-called switch, never run at import (the library sets no JAX option by itself).
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.set_cache_dir(str(folder))
    compilation_cache.reset_cache()
    return folder
