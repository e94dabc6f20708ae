"""Fixtures for the federated tests: a Flower task identity for building Messages by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Flower's Message() reads run/node/task ids from the process' TaskIdentity (set by a
    real ServerApp); strategies' configure_train builds Messages, so tests set one."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class FakeGrid:
    """Just enough Grid for ``configure_train``: a fixed set of connected nodes."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@pytest.fixture
def fake_grid() -> type[FakeGrid]:
    return FakeGrid


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
