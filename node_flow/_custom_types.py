"""jaxtyping aliases shared by the package."""

from collections.abc import Callable
from typing import Any, TypeAlias

from jaxtyping import ArrayLike, Real


ScalarLike: TypeAlias = float | int | Real[ArrayLike, ""]
Loss: TypeAlias = Callable[[Any], Any]
"""A loss is any callable `z ↦ scalar` of the lifted variable."""
Kernel: TypeAlias = Callable[[Any, Any], Any]
"""A kernel is any callable `(z, G) ↦ K(z)[G]` returning an array shaped like `z`."""
