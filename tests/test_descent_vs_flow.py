"""`experiments/descent_vs_flow.py`: every flag is checked before any computation, `--out`
first (the experiment itself runs with `make descent`)."""

import importlib.util
import re
from pathlib import Path

import pytest


def load_experiment():
    path = Path(__file__).parents[1] / "experiments" / "descent_vs_flow.py"
    spec = importlib.util.spec_from_file_location("descent_vs_flow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--depth", "1"], "--depth must be ≥ 2"),
        (["--T", "nan"], "--T must be positive and finite"),
        (["--rtol", "1e-3"], r"--rtol must lie in \(0, 1e-6\]"),
        (["--lrs", "0.2", "0.1"], "--lrs needs ≥ 3 distinct positive"),
        (["--lrs", "0.2", "0.1", "-0.05"], "--lrs needs ≥ 3 distinct positive"),
        (["--lrs", "0.4", "0.1", "0.05"], r"--T / lr must be an integer"),
        (["--fit-from", "4"], "--fit-from must leave ≥ 2 of the 5 lrs"),
    ],
)
def test_bad_flags_are_refused_before_any_computation(tmp_path, capsys, flags, message):
    experiment = load_experiment()
    with pytest.raises(SystemExit) as exit_info:
        experiment.parse_args(["--out", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_unwritable_out_is_refused_first(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        load_experiment().parse_args(["--out", str(blocker / "sub"), "--depth", "1"])
    error = capsys.readouterr().err.splitlines()[-1]  # the line after the usage
    assert "--out" in error and "not a writable folder" in error and "--depth" not in error
