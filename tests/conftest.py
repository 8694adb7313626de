"""Test configuration: float64 and strict dtype promotion on every verification path, and
the persistent compilation cache (`<repository>/.cache/jax`; `NODE_FLOW_CACHE_DIR=off`
turns it off, see `node_flow.enable_compilation_cache`)."""

from pathlib import Path

import jax

from node_flow import enable_compilation_cache


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
enable_compilation_cache(Path(__file__).resolve().parents[1] / ".cache" / "jax")


def pytest_configure(config):
    # Parallel workers share the cache and JAX writes its entries in place: a worker may
    # read an entry another is still writing. JAX then warns and compiles afresh (the
    # result is the same); that warning is not a test failure.
    for message in ("Error reading persistent compilation cache entry", "Error writing"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:UserWarning")
