"""jaxtyping aliases shared by the package."""

from collections.abc import Callable
from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PyTree, Real


Matrix: TypeAlias = Float[Array, "rows cols"]
SquareMatrix: TypeAlias = Float[Array, "n n"]
Stack: TypeAlias = Float[Array, "depth n n"]
Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = float | int | Real[ArrayLike, ""]
Times: TypeAlias = Real[Array, " times"]
Loss: TypeAlias = Callable[[Any], Any]
"""A loss is any callable `z ↦ scalar` of the lifted variable."""
Kernel: TypeAlias = Callable[[Any, Any], Any]
"""A kernel is any callable `(z, G) ↦ K(z)[G]` returning an array shaped like `z`."""
Params: TypeAlias = PyTree[Array]
