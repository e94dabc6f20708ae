"""Fixtures for the federated tests: a Flower task identity for building Messages by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

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
    """Just enough Grid for ``configure_train`` (a fixed set of connected nodes) and, with a
    ``responder``, for the strategies' own message exchanges (federated validation):
    ``send_and_receive`` answers each message with ``responder(message)`` (``None``: the
    node never replies) and keeps what was sent in ``sent``."""

    def __init__(self, node_ids: list[int], responder: Callable[[Any], Any] | None = None) -> None:
        self.node_ids = list(node_ids)
        self.responder = responder
        self.sent: list[Any] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        if self.responder is None:
            raise RuntimeError("FakeGrid without a responder cannot exchange messages")
        messages = list(messages)
        self.sent.extend(messages)
        replies = [self.responder(m) for m in messages]
        return [r for r in replies if r is not None]


@pytest.fixture
def fake_grid() -> type[FakeGrid]:
    return FakeGrid


def tiny_train_config() -> dict[str, Any]:
    """The smallest train config the federated tests run real site rounds with (RGB,
    MobileFaceNet at 1/16 width, 32 px, batch 4, 16-d embeddings)."""
    from facepriv.federated.cli import default_train_config

    cfg = default_train_config(32, "rgb", "mobilefacenet", 0.0625, 4, 0.05, 0, "cpu")
    cfg["model"]["embedding_size"] = 16
    return cfg


@pytest.fixture
def tiny_cfg() -> Callable[[], dict[str, Any]]:
    """A factory: each call returns a fresh ``tiny_train_config()`` to modify."""
    return tiny_train_config


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _global_model_message(tmp_path: Any, config: dict[str, Any], message_type: str) -> Any:
    """A server message to site 1 carrying the tiny global model's arrays and ``config``
    (``P.TRAIN_CONFIG`` is added: the resolved train config of that model); needs ``task_identity``."""
    import json

    from flwr.app import ConfigRecord, Message, RecordDict

    from facepriv.federated import protocol as P
    from facepriv.federated.arrays import shared_state, state_to_numpy
    from facepriv.federated.server_app import FedSettings, build_global_model

    model, cfg_dict = build_global_model(FedSettings(train_config=tiny_train_config(), out=str(tmp_path)))
    conf = ConfigRecord({P.TRAIN_CONFIG: json.dumps(cfg_dict), **config})
    return Message(RecordDict({P.ARRAYS: P.numpy_to_record(state_to_numpy(shared_state(model))), P.CONFIG: conf}),
                   dst_node_id=1, message_type=message_type)


@pytest.fixture
def global_model_message() -> Callable[[Any, dict[str, Any], str], Any]:
    """``global_model_message(tmp_path, config, message_type)``: see ``_global_model_message``."""
    return _global_model_message
