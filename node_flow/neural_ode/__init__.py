"""Constructors of relaxed balanced weight functions and residual networks (THEORY §3), and
the bases that turn node values into weight functions."""

from .._basis import (
    AbstractBasis as AbstractBasis,
    PiecewiseConstant as PiecewiseConstant,
    PiecewiseLinear as PiecewiseLinear,
)
from ._relaxed_balanced import (
    relaxed_balanced as relaxed_balanced,
    relaxed_balanced_residual as relaxed_balanced_residual,
    relaxed_balanced_weights as relaxed_balanced_weights,
    RelaxedBalancedWeights as RelaxedBalancedWeights,
)
