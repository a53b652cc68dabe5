"""The test kit: a virtual clock, golden-history replay and workflow checkers."""

from ironflow.testing.clock import VirtualClock
from ironflow.testing.golden import load_history, replay

__all__ = ["VirtualClock", "load_history", "replay"]
