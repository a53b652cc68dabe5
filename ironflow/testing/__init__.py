"""The test kit: a virtual clock, golden-history replay and workflow checkers."""

from ironflow.testing import strategies
from ironflow.testing.check import check_workflow
from ironflow.testing.clock import VirtualClock
from ironflow.testing.golden import load_history, load_path, replay
from ironflow.testing.mocks import mock_steps

__all__ = [
    "VirtualClock",
    "check_workflow",
    "load_history",
    "load_path",
    "mock_steps",
    "replay",
    "strategies",
]
