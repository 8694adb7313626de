"""Intrinsic kernels $K(z)[G]$: the lifted flow is $\\dot z = -K(z)[\\nabla\\ell(z)]$."""

from ._linear import balanced as balanced, relaxed_balanced as relaxed_balanced
from ._neural_ode import neural_ode as neural_ode
