"""The test kit: a virtual clock, golden-history replay and workflow checkers."""

from ironflow.testing import strategies
from ironflow.testing.check import check_workflow
from ironflow.testing.clock import VirtualClock
from ironflow.testing.golden import load_history, replay

__all__ = ["VirtualClock", "check_workflow", "load_history", "replay", "strategies"]
