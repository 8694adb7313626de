"""The one atomic writer (`node_flow._io`): whole files or nothing, and contents that read
back as written (checked with the standard readers: `json`, `csv`, the PNG signature)."""

import csv
import json
import stat

import jax.numpy as jnp
import numpy as np
import pytest

from node_flow._io import atomic_savefig, atomic_write, atomic_write_csv, atomic_write_json


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("data", ["text é ∞\n", b"\x00\xffbytes", lambda f: f.write(b"called")])
def test_atomic_write_round_trips_text_bytes_and_writer_functions(tmp_path, data):
    """Text (UTF-8), bytes and a writer function land in a new nested folder, exactly, and
    with the permissions of any other new file."""
    path = atomic_write(tmp_path / "new" / "deeper" / "file.bin", data)
    expected = data.encode() if isinstance(data, str) else data
    if callable(data):
        expected = b"called"
    assert path.read_bytes() == expected
    assert _listing(path.parent) == ["file.bin"]
    # The permissions a plain `open` gives (not mkstemp's private 0600).
    plain = path.parent / "plain.bin"
    plain.write_bytes(b"")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


class _Interrupted(Exception):
    pass


def _failing_writer(f):
    f.write(b"half of the new content")
    raise _Interrupted


def test_a_failing_writer_leaves_no_partial_file_and_no_temporary_file(tmp_path):
    """A writer that fails after writing part of its data: the exception propagates, a new
    file does not appear, an existing file keeps its old content, and no temporary file is
    left in the folder."""
    with pytest.raises(_Interrupted):
        atomic_write(tmp_path / "new.bin", _failing_writer)
    assert _listing(tmp_path) == []
    old = atomic_write(tmp_path / "old.txt", "old content")
    with pytest.raises(_Interrupted):
        atomic_write(old, _failing_writer)
    assert old.read_text() == "old content"
    assert _listing(tmp_path) == ["old.txt"]


def test_atomic_write_json_round_trips_numpy_and_jax_values(tmp_path):
    """NumPy and JAX scalars and arrays are written as plain JSON numbers and lists."""
    obj = {
        "f": np.float64(0.1),
        "i": np.int32(-3),
        "b": np.bool_(True),
        "a": np.arange(3.0),
        "j": jnp.asarray([[1, 2], [3, 4]]),
        "text": "ε",
    }
    path = atomic_write_json(tmp_path / "out.json", obj)
    back = json.loads(path.read_text())
    assert back == {
        "f": 0.1,
        "i": -3,
        "b": True,
        "a": [0.0, 1.0, 2.0],
        "j": [[1, 2], [3, 4]],
        "text": "ε",
    }
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert _listing(tmp_path) == ["out.json"]


def test_atomic_write_csv_round_trips_rows_with_missing_columns(tmp_path):
    """Columns in order of first appearance; a missing value is empty; NumPy scalars are
    written as plain numbers (read back by `csv.DictReader`)."""
    rows = [{"a": 1, "b": np.float64(2.5)}, {"b": "x", "c": np.int64(7)}]
    path = atomic_write_csv(tmp_path / "rows.csv", rows)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["a", "b", "c"]
        assert list(reader) == [{"a": "1", "b": "2.5", "c": ""}, {"a": "", "b": "x", "c": "7"}]
    assert atomic_write_csv(tmp_path / "empty.csv", []).read_text() == ""


def test_atomic_savefig_writes_a_png_or_nothing(tmp_path):
    """A figure saved as PNG starts with the PNG signature; an unknown format fails and
    leaves no file behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    try:
        png = atomic_savefig(fig, tmp_path / "fig.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(ValueError, match="not supported"):
            atomic_savefig(fig, tmp_path / "fig.unknownformat")
    finally:
        plt.close(fig)
    assert _listing(tmp_path) == ["fig.png"]
