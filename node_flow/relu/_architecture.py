"""The static architecture of a ReLU network on a DAG: neurons, edges and paths."""

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import SupportsIndex

import numpy as np


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _as_index_tuple(name: str, values) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except TypeError as err:
        raise TypeError(f"Architecture: `{name}` must be a sequence of neuron indices.") from err
    if len(set(out)) != len(out):
        raise ValueError(f"Architecture: `{name}` lists a neuron twice: {out}.")
    if any(v < 0 for v in out):
        raise ValueError(f"Architecture: `{name}` holds a negative neuron index: {out}.")
    return out


def _topological_order(edges, out_edges, in_edges) -> list[int]:
    """Kahn's topological order of the neurons; a cycle is refused, naming its neurons."""
    num_neurons = len(out_edges)
    indeg = [len(in_edges[v]) for v in range(num_neurons)]
    order = [v for v in range(num_neurons) if indeg[v] == 0]
    for v in order:
        for e in out_edges[v]:
            w = edges[e][1]
            indeg[w] -= 1
            if indeg[w] == 0:
                order.append(w)
    if len(order) < num_neurons:
        # Left over: the cycles and what hangs below them; prune the latter.
        cyclic = {v for v in range(num_neurons) if indeg[v] > 0}
        pruned = True
        while pruned:
            dead = {v for v in cyclic if all(edges[e][1] not in cyclic for e in out_edges[v])}
            pruned = bool(dead)
            cyclic -= dead
        cyclic = sorted(cyclic)
        raise ValueError(f"Architecture: the edges contain a cycle through neurons {cyclic}.")
    return order


def _check_on_paths(edges, order, out_edges, in_edges, starts, outputs) -> None:
    """Every neuron is reached from a start (input or constant) and reaches an output."""
    num_neurons = len(out_edges)
    reaches = [v in outputs for v in range(num_neurons)]
    for v in reversed(order):
        reaches[v] = reaches[v] or any(reaches[edges[e][1]] for e in out_edges[v])
    reached = [v in starts for v in range(num_neurons)]
    for v in order:
        reached[v] = reached[v] or any(reached[edges[e][0]] for e in in_edges[v])
    orphans = [v for v in range(num_neurons) if not (reaches[v] and reached[v])]
    if orphans:
        raise ValueError(
            f"Architecture: neuron(s) {orphans} lie on no input→output path (a neuron "
            "must be reachable from an input or constant and reach an output)."
        )


def _enumerate_paths(edges, out_edges, starts, outputs):
    """Depth-first path enumeration (start neurons in order, out-edges by index): the paths
    as tuples of edge indices, and the index of each path's start."""
    paths: list[tuple[int, ...]] = []

    def extend(v: int, prefix: tuple[int, ...]) -> None:
        if v in outputs:
            paths.append(prefix)
            return
        for e in sorted(out_edges[v]):
            extend(edges[e][1], prefix + (e,))

    start_of = []
    for k, s in enumerate(starts):
        before = len(paths)
        extend(s, ())
        start_of.extend([k] * (len(paths) - before))
    return paths, start_of


def _path_arrays(edges, paths, hidden) -> dict:
    """The padded edge and hidden-neuron indices of each path, the path–edge incidence and
    the signed hidden-neuron–edge incidence (in minus out), all read-only."""
    hidden_pos = {v: i for i, v in enumerate(hidden)}
    num_edges, num_paths = len(edges), len(paths)
    max_len = max(len(p) for p in paths)
    path_edges = np.full((num_paths, max_len), num_edges, dtype=np.int64)
    path_hidden = np.full((num_paths, max(max_len - 1, 1)), len(hidden), dtype=np.int64)
    incidence = np.zeros((num_paths, num_edges))
    for i, p in enumerate(paths):
        path_edges[i, : len(p)] = p
        path_hidden[i, : len(p) - 1] = [hidden_pos[edges[e][1]] for e in p[:-1]]
        incidence[i, list(p)] = 1.0
    signed = np.zeros((len(hidden), num_edges))
    for i, (u, v) in enumerate(edges):
        if v in hidden_pos:
            signed[hidden_pos[v], i] += 1.0
        if u in hidden_pos:
            signed[hidden_pos[u], i] -= 1.0
    return {
        "path_edges": _readonly(path_edges),
        "path_hidden": _readonly(path_hidden),
        "incidence": _readonly(incidence),
        "neuron_incidence": _readonly(signed),
    }


@dataclasses.dataclass(frozen=True, init=False)
class Architecture:
    r"""The static architecture of a ReLU network on a directed acyclic graph.

    Neurons are the integers `0, …, num_neurons - 1`. Each neuron is exactly one of
    a data **input** (a source, its value is a coordinate of $x$), a **constant** input
    (a source of value 1: biases are its out-edges), an **output** (a sink, no activation)
    or **hidden** (ReLU activation; every neuron listed in none of the other three).
    Edge `e = (u, v)` carries the weight $\theta_e$ from neuron `u` to neuron `v`; skip
    connections are allowed.

    **Paths.** A path is a sequence of edges from an input or constant neuron to an output
    neuron. Paths are listed in depth-first order: by start neuron (the `inputs` in their
    order, then the `constants` in theirs), then lexicographically by the indices of
    successive edges. The path-lifting $z_p = \prod_{e \in p} \theta_e$ uses this order.

    The class is immutable and hashable, so it is a static field of a network and a
    static argument of jitted functions. Construction validates the graph: a cycle, a
    self-loop, a repeated edge, an edge into an input or out of an output, and a neuron
    that lies on no input→output path are errors that name the offending neurons.

    **Arguments:**

    - `edges`: a sequence of `(u, v)` pairs.
    - `inputs`: the data inputs, in the order of the coordinates of $x$ (default: every
      neuron without in-edges that is not a constant, in increasing order).
    - `outputs`: the outputs, in the order of the coordinates of $y$ (default: every
      neuron without out-edges, in increasing order).
    - `constants`: the constant-1 inputs carrying biases (default: none).
    """

    edges: tuple[tuple[int, int], ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    constants: tuple[int, ...]

    def __init__(
        self,
        edges: Sequence[Sequence[SupportsIndex]],
        inputs: Sequence[SupportsIndex] | None = None,
        outputs: Sequence[SupportsIndex] | None = None,
        constants: Sequence[SupportsIndex] = (),
    ):
        edge_list = []
        for e in edges:
            pair = tuple(int(v) for v in e)
            if len(pair) != 2:
                raise ValueError(f"Architecture: an edge must be a pair (u, v); got {pair}.")
            edge_list.append(pair)
        edges_t = tuple(edge_list)
        if not edges_t:
            raise ValueError("Architecture: `edges` is empty; a network needs at least one edge.")
        if any(u < 0 or v < 0 for u, v in edges_t):
            raise ValueError("Architecture: edges hold a negative neuron index.")
        loops = [u for u, v in edges_t if u == v]
        if loops:
            raise ValueError(f"Architecture: self-loop on neuron(s) {loops} (a cycle).")
        if len(set(edges_t)) != len(edges_t):
            dup = sorted({e for e in edges_t if edges_t.count(e) > 1})
            raise ValueError(f"Architecture: repeated edge(s) {dup}; merge their weights.")
        constants_t = _as_index_tuple("constants", constants)
        has_in = {v for _, v in edges_t}
        has_out = {u for u, _ in edges_t}
        mentioned = has_in | has_out | set(constants_t)
        if inputs is None:
            inputs_t = tuple(sorted(has_out - has_in - set(constants_t)))
        else:
            inputs_t = _as_index_tuple("inputs", inputs)
        if outputs is None:
            outputs_t = tuple(sorted(has_in - has_out))
        else:
            outputs_t = _as_index_tuple("outputs", outputs)
        for a, b in itertools.combinations(
            (("inputs", inputs_t), ("outputs", outputs_t), ("constants", constants_t)), 2
        ):
            common = sorted(set(a[1]) & set(b[1]))
            if common:
                raise ValueError(f"Architecture: neuron(s) {common} are both {a[0]} and {b[0]}.")
        if not inputs_t and not constants_t:
            raise ValueError("Architecture: the network has no input neuron.")
        if not outputs_t:
            raise ValueError("Architecture: the network has no output neuron.")
        sources = set(inputs_t) | set(constants_t)
        bad = sorted(v for v in has_in if v in sources)
        if bad:
            raise ValueError(f"Architecture: edge(s) into input/constant neuron(s) {bad}.")
        bad = sorted(u for u in has_out if u in set(outputs_t))
        if bad:
            raise ValueError(f"Architecture: edge(s) out of output neuron(s) {bad}.")
        object.__setattr__(self, "edges", edges_t)
        object.__setattr__(self, "inputs", inputs_t)
        object.__setattr__(self, "outputs", outputs_t)
        object.__setattr__(self, "constants", constants_t)
        num_neurons = 1 + max(mentioned | set(inputs_t) | set(outputs_t))
        object.__setattr__(self, "_num_neurons", num_neurons)
        self._build(num_neurons)

    # -- construction helpers (run once, at trace time) --------------------------------

    def _build(self, num_neurons: int) -> None:
        edges, outputs = self.edges, set(self.outputs)
        out_edges: list[list[int]] = [[] for _ in range(num_neurons)]
        in_edges: list[list[int]] = [[] for _ in range(num_neurons)]
        for i, (u, v) in enumerate(edges):
            out_edges[u].append(i)
            in_edges[v].append(i)
        order = _topological_order(edges, out_edges, in_edges)
        starts = self.inputs + self.constants
        _check_on_paths(edges, order, out_edges, in_edges, set(starts), outputs)
        paths, start_of = _enumerate_paths(edges, out_edges, starts, outputs)
        hidden = tuple(v for v in range(num_neurons) if v not in set(starts) | outputs)
        output_pos = {v: i for i, v in enumerate(self.outputs)}
        derived = {
            "hidden": hidden,
            "topological_order": tuple(order),
            "paths": tuple(paths),
            "depth": max(len(p) for p in paths),
            **_path_arrays(edges, paths, hidden),
            "path_start": _readonly(np.asarray(start_of, dtype=np.int64)),
            "path_output": _readonly(
                np.asarray([output_pos[edges[p[-1]][1]] for p in paths], dtype=np.int64)
            ),
        }
        for k, v in derived.items():
            object.__setattr__(self, "_" + k, v)

    # -- the public, read-only description ---------------------------------------------

    @property
    def num_neurons(self) -> int:
        return self._num_neurons

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_paths(self) -> int:
        """$d$, the dimension of the path-lifting $z$."""
        return len(self._paths)

    @property
    def hidden(self) -> tuple[int, ...]:
        """The hidden (ReLU) neurons, in increasing order: the order of $h$ and of patterns."""
        return self._hidden

    @property
    def paths(self) -> tuple[tuple[int, ...], ...]:
        """Each path as the tuple of its edge indices, input side first."""
        return self._paths

    @property
    def depth(self) -> int:
        """The number of edges of the longest path."""
        return self._depth

    @property
    def topological_order(self) -> tuple[int, ...]:
        return self._topological_order

    @property
    def path_edges(self) -> np.ndarray:
        """`(num_paths, depth)` edge indices, padded with `num_edges`."""
        return self._path_edges

    @property
    def path_hidden(self) -> np.ndarray:
        """`(num_paths, max(depth - 1, 1))` positions in `hidden` of the hidden neurons of each
        path, padded with `len(hidden)`."""
        return self._path_hidden

    @property
    def path_start(self) -> np.ndarray:
        """Position of each path's start in `inputs + constants`."""
        return self._path_start

    @property
    def path_output(self) -> np.ndarray:
        """Position of each path's end in `outputs`."""
        return self._path_output

    @property
    def incidence(self) -> np.ndarray:
        """The `(num_paths, num_edges)` 0/1 matrix $P_{pe} = [e \\in p]$."""
        return self._incidence

    @property
    def neuron_incidence(self) -> np.ndarray:
        """The `(num_hidden, num_edges)` matrix $D_{ve} = [e \\text{ into } v] - [e \\text{ out of }
        v]$, so that $h = D\\,\\theta^2$."""
        return self._neuron_incidence

    def __repr__(self) -> str:
        return (
            f"Architecture(neurons={self.num_neurons}, edges={self.num_edges}, "
            f"paths={self.num_paths}, inputs={self.inputs}, outputs={self.outputs}, "
            f"constants={self.constants}, hidden={self.hidden})"
        )


def mlp_architecture(widths: Sequence[SupportsIndex], bias: bool) -> Architecture:
    r"""The layered DAG of an MLP with widths $(n_0, \dots, n_L)$.

    Neuron numbering: layer $j$ holds neurons `offset_j + i`, $i < n_j$, with
    `offset_j = n_0 + … + n_{j-1}`; with `bias=True` the constant neuron of layer $j \geq 1$
    is `n_0 + … + n_L + (j - 1)`. Edge order, layer by layer: the entries of $U_j$ in
    row-major order (entry $(i, k)$ is the edge from neuron $k$ of layer $j-1$ to neuron
    $i$ of layer $j$), then the biases $b_j$. Paths from data inputs are thus ordered
    lexicographically by $(i_0, i_1, \dots, i_L)$ (so the first $n_0 n_1 \cdots n_L$
    entries of $z$ reshape to `(n_0, …, n_L)`), followed by the paths starting at the
    bias of layer 1, ordered by $(i_1, \dots, i_L)$, then layer 2, etc.
    """
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or any(n < 1 for n in widths):
        raise ValueError(f"mlp_architecture: need at least two positive widths; got {widths}.")
    return _mlp_architecture(widths, bool(bias))


# One Architecture per (widths, bias): it is immutable, and rebuilding it (a Python pass over
# every edge and path) on each `MLP.with_edge_weights` costs ~1 s at 100-50-1 per trace.
@functools.lru_cache(maxsize=64)
def _mlp_architecture(widths: tuple[int, ...], bias: bool) -> Architecture:
    offsets = np.concatenate([[0], np.cumsum(widths)])
    total = int(offsets[-1])
    edges = []
    for j in range(1, len(widths)):
        edges += [
            (int(offsets[j - 1]) + k, int(offsets[j]) + i)
            for i in range(widths[j])
            for k in range(widths[j - 1])
        ]
        if bias:
            edges += [(total + j - 1, int(offsets[j]) + i) for i in range(widths[j])]
    L = len(widths) - 1
    return Architecture(
        edges,
        inputs=range(widths[0]),
        outputs=range(int(offsets[L]), total),
        constants=range(total, total + L) if bias else (),
    )
