"""The test kit: a virtual clock, golden-history replay and workflow checkers."""

from ironflow.testing.clock import VirtualClock

__all__ = ["VirtualClock"]
