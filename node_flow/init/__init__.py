"""Initializations of deep linear networks: generic, balanced, relaxed balanced."""

from ._balanced import balanced as balanced, relaxed_balanced as relaxed_balanced
from ._gaussian import gaussian as gaussian
