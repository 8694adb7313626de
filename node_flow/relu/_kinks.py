"""What happens where a pre-activation reaches its kink $a_{iv} = 0$: the trajectory crosses,
slides along the kink, or leaves it. Host-side decisions between two diffrax solves."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._sliding import rates, sliding_gates, Structure


# A rate |ȧ| below this fraction of the largest |ȧ| on the dataset counts as zero
# (a tangency); the one-sided rates are computed to about 1e-15 relative.
_RATE_RTOL = 1e-9
# A sliding gate this far outside [0, 1] is not a Filippov solution (the chord-Newton
# solve is exact to ~1e-13 for the networks of the experiments).
_GATE_SLACK = 1e-7


# The smallest non-zero capacity: one compiled solve covers 1 to 4 sliding entries (the
# padding costs a few more tangents per step; each extra capacity costs a compilation).
_MIN_CAPACITY = 4


def capacity(count: int) -> int:
    """Sliding-set capacity: 0, or the next power of two from `_MIN_CAPACITY` on, so a solve
    compiles a few times only."""
    return 0 if count == 0 else max(_MIN_CAPACITY, 1 << (count - 1).bit_length())


@dataclasses.dataclass
class KinkState:
    """The activation structure carried from one interval to the next (host arrays)."""

    pattern: np.ndarray  # (N, H) 0/1 gates of the non-sliding entries
    sliding: list  # sorted (sample, hidden-position) entries held at a = 0
    handled: np.ndarray  # (N, H) bool: the entries decided at the last kink

    def structure(self, pre, margin, armed=True) -> Structure:
        """The interval's [`Structure`][]: the event starts at `margin · scale` on the
        entries just handled (they sit on zero) and at $|a_{iv}|$ elsewhere."""
        N, H = self.pattern.shape
        cap = capacity(len(self.sliding))
        rows, cols = np.full(cap, N), np.zeros(cap, dtype=np.int64)
        mask = np.zeros(cap, dtype=bool)
        for j, (i, v) in enumerate(self.sliding):
            rows[j], cols[j], mask[j] = i, v, True
        pre = np.asarray(pre)
        scale = max(float(np.max(np.abs(pre), initial=0.0)), 1.0)
        signs = np.where(self.pattern > 0, 1.0, -1.0)
        offsets = np.where(self.handled, margin * scale - signs * pre, 0.0)
        return Structure(
            pattern=jnp.asarray(self.pattern),
            rows=jnp.asarray(rows),
            cols=jnp.asarray(cols),
            mask=jnp.asarray(mask),
            signs=jnp.asarray(signs),
            offsets=jnp.asarray(offsets),
            scale=jnp.asarray(scale),
            armed=jnp.asarray(armed),
        )


def classify(alpha_plus: float, alpha_minus: float, side: int, tol: float) -> str:
    r"""Fate of an entry on its kink from the rates $\alpha_\pm$ of $a_{iv}$ under the field
    with ReLU'(0) = 1 ($+$) and 0 ($-$): `"active"`, `"inactive"` or `"slide"` (both
    fields push onto the kink). `side` is where it came from (+1 active, -1 inactive, 0:
    it starts on the kink); a repelling or fully tangent kink keeps that side (inactive
    at the start: the autodiff convention)."""
    sp = 0 if abs(alpha_plus) <= tol else (1 if alpha_plus > 0 else -1)
    sm = 0 if abs(alpha_minus) <= tol else (1 if alpha_minus > 0 else -1)
    if sm > 0 and sp < 0:
        return "slide"
    if sp >= 0 and sm >= 0 and (sp > 0 or sm > 0):
        return "active"
    if sp <= 0 and sm <= 0 and (sp < 0 or sm < 0):
        return "inactive"
    return "active" if side > 0 else "inactive"


def one_sided_rates(problem, state: KinkState, theta, entry, margin):
    """$(\\alpha_+, \\alpha_-)$ of `entry` with the other entries as in `state`, and the
    largest |ȧ| on the dataset (the scale of a zero rate)."""
    others = [e for e in state.sliding if e != entry]
    out = []
    for gate in (1.0, 0.0):
        pattern = state.pattern.copy()
        pattern[entry] = gate
        trial = KinkState(pattern, others, state.handled)
        _, _, rate = rates(problem, trial.structure(np.zeros(pattern.shape), margin), theta)
        rate = np.asarray(rate)
        out.append((float(rate[entry]), float(np.max(np.abs(rate), initial=0.0))))
    return out[0][0], out[1][0], max(out[0][1], out[1][1])


def settle_gates(problem, state: KinkState, theta, margin):
    """Solve the sliding gates of `state`; an entry whose gate leaves [0, 1] is not sliding
    (it takes the side its gate points to) and the rest is solved again. Returns the
    entries released this way."""
    released = []
    while state.sliding:
        lam = np.asarray(sliding_gates(problem, state.structure(np.zeros(1), margin), theta))
        lam = lam[: len(state.sliding)]
        bad = [j for j, g in enumerate(lam) if not (-_GATE_SLACK <= g <= 1 + _GATE_SLACK)]
        if not bad:
            return released
        j = max(bad, key=lambda j: abs(lam[j] - 0.5))
        entry = state.sliding.pop(j)
        state.pattern[entry] = 1.0 if lam[j] > 0.5 else 0.0
        released.append(entry)
    return released


def kink_transition(
    problem, state: KinkState, theta, pre, lam, value, margin, convention, at_start=False
):
    """The structure after an event: the entries that reached their kink (value within
    `margin` of the minimum) cross or start sliding; sliding entries whose gate reached 0
    or 1 leave to that side. `at_start`: the entries sit on their kink at $t_0$ (no side
    of arrival). Returns the new state, the entries that changed and those
    pushed onto a kink from both sides (which stop an `"autodiff"` run)."""
    pre = np.asarray(pre)
    cross_value, leave_value = value
    vmin = min(np.min(cross_value, initial=np.inf), np.min(leave_value, initial=np.inf))
    pattern = state.pattern.copy()
    handled = np.zeros(pattern.shape, dtype=bool)
    sliding = list(state.sliding)
    changed, trapped = [], []
    for j, entry in enumerate(state.sliding):
        if leave_value[j] <= vmin + margin:
            sliding.remove(entry)
            pattern[entry] = 1.0 if lam[j] > 0.5 else 0.0
            handled[entry] = True
            changed.append(entry)
    hits = np.argwhere(cross_value <= vmin + margin)
    current = KinkState(pattern, sliding, handled)
    for entry in map(tuple, hits):
        side = 0 if at_start else (1 if state.pattern[entry] > 0 else -1)
        a_plus, a_minus, top = one_sided_rates(problem, current, theta, entry, margin)
        fate = classify(a_plus, a_minus, side, _RATE_RTOL * top)
        handled[entry] = True
        if fate == "slide":
            trapped.append(entry)
            if convention == "filippov":
                sliding.append(entry)
                changed.append(entry)
            continue
        if (fate == "active") != (side > 0):
            changed.append(entry)
        pattern[entry] = 1.0 if fate == "active" else 0.0
    new = KinkState(pattern, sorted(sliding), handled)
    for entry in settle_gates(problem, new, theta, margin):
        new.handled[entry] = True
        changed.append(entry)
    return new, sorted(set(changed)), trapped
