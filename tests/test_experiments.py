"""The experiment scripts refuse bad flags before computing, and cache what they should.

The scripts are imported from `experiments/` (their `parse_args` and `main`), so no
subprocess and no flow is run: argparse validation is instant, and the depth-limit cache is
exercised with its three computations replaced by closed-form fakes."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        yield {
            name: importlib.import_module(name)
            for name in ("linear_intrinsic", "depth_limit", "criterion_table")
        }
    finally:
        sys.path.remove(str(EXPERIMENTS))


# (script, flags, the flag named in the message, what the message says)
_BAD_FLAGS = [
    ("linear_intrinsic", ["--width", "0"], "--width", "integer ≥ 1"),
    ("linear_intrinsic", ["--saves", "0"], "--saves", "integer ≥ 2"),
    ("linear_intrinsic", ["--saves", "1"], "--saves", "integer ≥ 2"),
    ("linear_intrinsic", ["--T", "-1"], "--T", "> 0"),
    ("linear_intrinsic", ["--T", "0"], "--T", "> 0"),
    ("linear_intrinsic", ["--T", "nan"], "--T", "not finite"),
    ("linear_intrinsic", ["--depth", "1"], "--depth", "integer ≥ 2"),
    ("linear_intrinsic", ["--depth", "3.5"], "--depth", "not an integer"),
    ("linear_intrinsic", ["--rtol", "0"], "--rtol", "(0, 1)"),
    ("linear_intrinsic", ["--atol", "1"], "--atol", "(0, 1)"),
    ("linear_intrinsic", ["--seed", "-1"], "--seed", "integer ≥ 0"),
    ("linear_intrinsic", ["--lambdas", "0.1"], "--lambdas", "depth − 1 = 3 values"),
    ("linear_intrinsic", ["--lambdas", "0.1", "inf", "0"], "--lambdas", "not finite"),
    ("depth_limit", ["--depths", "0"], "--depths", "integer ≥ 1"),
    ("depth_limit", ["--depths", "16", "-4"], "--depths", "integer ≥ 1"),
    ("depth_limit", ["--depths", "16", "16", "32"], "--depths", "repeated"),
    ("depth_limit", ["--depths", "4", "8"], "--fit-from", "at least two depths ≥ --fit-from"),
    ("depth_limit", ["--depths", "8", "32", "--fit-from", "16"], "--fit-from", "has 1"),
    ("depth_limit", ["--grid", "1"], "--grid", "integer ≥ 2"),
    ("depth_limit", ["--width", "0"], "--width", "integer ≥ 1"),
    ("depth_limit", ["--saves", "0"], "--saves", "integer ≥ 2"),
    ("depth_limit", ["--T", "-1"], "--T", "> 0"),
    ("depth_limit", ["--rtol=-1e-8"], "--rtol", "(0, 1)"),
    ("depth_limit", ["--grid-rtol", "2"], "--grid-rtol", "(0, 1)"),
    ("depth_limit", ["--profiles", "linear"], "--profiles", "invalid choice"),
    ("depth_limit", ["--lambda-constant", "inf"], "--lambda-constant", "not finite"),
    ("depth_limit", ["--lambda-amplitude", "x"], "--lambda-amplitude", "not a number"),
    ("depth_limit", ["--fit-from", "0"], "--fit-from", "integer ≥ 1"),
    ("criterion_table", ["--max-depth-linear", "2"], "--max-depth-linear", "integer ≥ 3"),
    ("criterion_table", ["--grid-cells", "0"], "--grid-cells", "integer ≥ 1"),
    ("criterion_table", ["--rk4-cells", "-1"], "--rk4-cells", "integer ≥ 1"),
    ("criterion_table", ["--scaling-n", "4", "4"], "--scaling-n", "repeated"),
    ("criterion_table", ["--time-budget", "0"], "--time-budget", "> 0"),
    ("criterion_table", ["--seed", "-2"], "--seed", "integer ≥ 0"),
]


@pytest.mark.parametrize(
    "script, flags, flag, says", _BAD_FLAGS, ids=[f"{s}{' '.join(f)}" for s, f, *_ in _BAD_FLAGS]
)
def test_experiment_refuses_a_bad_flag_naming_it(
    scripts, tmp_path, capsys, script, flags, flag, says
):
    """Issue 12: `--width 0`, `--saves 0`, `--T -1`, `--depths 0` ended in library
    tracebacks. Every invalid value is an argparse error (exit status 2) naming the flag."""
    with pytest.raises(SystemExit) as exit_info:
        scripts[script].parse_args([*flags, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"argument {flag}:" in message and says in message


@pytest.mark.parametrize("script", ["linear_intrinsic", "depth_limit", "criterion_table"])
def test_experiment_checks_out_is_writable_before_computing(
    scripts, tmp_path, capsys, monkeypatch, script
):
    """Issue 12: `linear_intrinsic.py` with an unwritable `--out` computed everything and
    failed at the end. `main` now stops at the flags, before any library call (the
    library is replaced by an object that fails on any use)."""

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"computed before checking --out (nf.{name})")

    monkeypatch.setattr(scripts[script], "nf", Untouchable(), raising=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        scripts[script].main(["--out", str(blocker / "results")])
    assert exit_info.value.code == 2
    assert f"argument --out: cannot write to {blocker / 'results'}" in capsys.readouterr().err


def test_depth_limit_cache_keys_are_exactly_the_inputs_of_each_entry(scripts, tmp_path):
    """A cached run depends on the problem flags and its own tolerances, never on the
    post-processing flags (`--fit-from`), the list of the other entries, `--out` or
    `--fresh`; the grid runs do not depend on `--rtol`, the depth runs not on `--grid-rtol`."""
    dl = scripts["depth_limit"]
    base = ["--depths", "4", "8", "16", "--fit-from", "4", "--out", str(tmp_path)]
    args = dl.parse_args(base)
    same = [
        ["--fit-from", "8"],
        ["--depths", "4", "8", "16", "32"],
        ["--grid", "8"],
        ["--fresh"],
        ["--out", str(tmp_path / "elsewhere")],
    ]
    for extra in same:
        other = dl.parse_args(base + extra)
        for kind, size in (("depth", 8), ("grid", 8), ("limit", None)):
            assert dl.depends_on(other, kind, size) == dl.depends_on(args, kind, size), extra
    changed = {
        "--T": ("1.5", {"depth", "grid", "limit"}),
        "--saves": ("5", {"depth", "grid", "limit"}),
        "--seed": ("1", {"depth", "grid", "limit"}),
        "--width": ("2", {"depth", "grid", "limit"}),
        "--lambda-constant": ("0.5", {"depth", "grid", "limit"}),
        "--rtol": ("1e-9", {"depth", "limit"}),
        "--grid-rtol": ("1e-8", {"grid"}),
    }
    for flag, (value, kinds) in changed.items():
        other = dl.parse_args(base + [flag, value])
        for kind in ("depth", "grid", "limit"):
            differs = dl.depends_on(other, kind, 8) != dl.depends_on(args, kind, 8)
            assert differs == (kind in kinds), (flag, kind)


def _fake_runs(calls, n):
    """Closed-form stand-ins for the three computations: z_L − z_∞ = (1/L)·ones (so
    max_t ‖z_L − z_∞‖_F = n/L exactly, slope −1) and z_m − z_∞ = (1/m²)·ones (slope −2)."""

    def limit(weights, loss, ts, tol):
        calls.append("limit")
        P, S = len(weights), len(ts)
        return {"z": np.zeros((P, S, n, n)), "losses": np.ones((P, S))}

    def depth(L, weights, loss, ts, tol):
        calls.append(f"depth {L}")
        P, S = len(weights), len(ts)
        z = np.full((P, S, n, n), 1.0 / L)
        one = np.full(P, 1.0 / L)
        return {
            "z_param": z,
            "z_intrinsic": z,
            "losses": np.ones((P, S)),
            "drift": one,
            "rel_drift": one,
            "steps": np.full(P, 10),
        }

    def grid(m, weights, loss, ts, tol):
        calls.append(f"grid {m}")
        P, S = len(weights), len(ts)
        return {
            "z": np.full((P, S, n, n), 1.0 / m**2),
            "losses": np.ones((P, S)),
            "lambda_drift_interior": np.full(P, 1.0 / m),
            "lambda_drift_ends": np.full(P, 1.0 / m),
        }

    return limit, depth, grid


def test_depth_limit_changing_fit_from_recomputes_nothing(scripts, tmp_path, monkeypatch):
    """Issue 12: changing only `--fit-from` recomputed every cached run. A first run computes
    each entry once; a rerun with another `--fit-from` computes none, and refits: the slope
    over the fitted depths is −1 to round-off (the fakes' errors are exactly n/L), reported
    with the number of points; adding a depth computes that depth alone."""
    dl = scripts["depth_limit"]
    calls = []
    limit, depth, grid = _fake_runs(calls, n=2)
    monkeypatch.setattr(dl, "run_limit", limit)
    monkeypatch.setattr(dl, "run_depth", depth)
    monkeypatch.setattr(dl, "run_grid", grid)
    monkeypatch.setattr(dl, "plot", lambda *args: None)  # figures are not the claim here
    flags = ["--width", "2", "--profiles", "zero", "--depths", "4", "8", "16"]
    flags += ["--grid", "2", "4", "--out", str(tmp_path)]
    dl.main(flags + ["--fit-from", "4"])
    assert sorted(calls) == ["depth 16", "depth 4", "depth 8", "grid 2", "grid 4", "limit"]
    calls.clear()
    dl.main(flags + ["--fit-from", "8"])
    assert calls == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    fit = summary["depth"]["zero"]["fit"]
    assert fit["points"] == 2 and abs(fit["slope"] + 1.0) < 1e-12
    assert abs(summary["grid"]["zero"]["fit"]["slope"] + 2.0) < 1e-12
    dl.main(flags + ["--depths", "4", "8", "16", "32"])
    assert calls == ["depth 32"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_depth_limit_reports_an_infeasible_profile_naming_the_flags_and_keeps_finished_entries(
    scripts, tmp_path, monkeypatch
):
    """A λ profile that the library refuses at some depth (its ValueError) ends the study
    with a message naming the entry and the λ flags, not a traceback; the entries finished
    before it are kept, and a rerun computes only what is missing."""
    dl = scripts["depth_limit"]
    calls = []
    limit, depth, grid = _fake_runs(calls, n=2)

    def infeasible_at_8(L, *args):
        if L == 8:
            raise ValueError("the λ profile is infeasible at depth L = 8")
        return depth(L, *args)

    monkeypatch.setattr(dl, "run_limit", limit)
    monkeypatch.setattr(dl, "run_depth", infeasible_at_8)
    monkeypatch.setattr(dl, "run_grid", grid)
    monkeypatch.setattr(dl, "plot", lambda *args: None)
    flags = ["--width", "2", "--profiles", "constant", "--lambda-constant", "-50"]
    flags += ["--depths", "4", "8", "16", "--fit-from", "4", "--grid", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        dl.main(flags)
    message = str(exit_info.value.code)
    assert "depth_00008: the λ profile is infeasible" in message
    assert "--lambda-constant -50.0" in message and "kept in" in message
    assert calls == ["limit", "depth 4"]
    monkeypatch.setattr(dl, "run_depth", depth)
    calls.clear()
    dl.main(flags)
    assert calls == ["depth 8", "depth 16"]
