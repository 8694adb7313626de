"""What machine a benchmark measured: one description for every script's results file."""

import os
import platform
from importlib.metadata import PackageNotFoundError, version


_PACKAGES = ("jax", "jaxlib", "diffrax", "lineax", "numpy", "scipy", "torch", "torchdiffeq")


def hardware(**extra) -> dict:
    """CPU model, cores, OS, JAX backend, library versions and the load average at the
    time of the call (a busy machine explains a slow record), plus `extra` (e.g. the
    torch threads a script used)."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:  # not installed: its peer is skipped and says so
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "device": jax.default_backend(),
        "load_average": os.getloadavg(),
        "versions": versions,
    } | extra
