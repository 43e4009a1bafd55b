"""The relay ClientApp and the institution's trainer, over a real Unix socket with a fake app."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common import Metadata

from fl.relay_app import relay
from fl.trainer import TrainerServer
from fl.trainer_wire import TrainerError, TrainerUnavailable

OWN = {"participant": "bank-a", "data": "/institution/own.csv", "config": "/institution/federation.toml"}


def _message() -> Message:
    return make_message(Metadata(run_id=3, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                                 group_id="2", created_at=0.0, ttl=100.0, message_type="train"),
                        content=RecordDict({"config": ConfigRecord({"round": 2, "federation": "f"})}))


class _FakeApp:
    """Stands for the unsigned ClientApp: notes what it was given, answers or raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.seen: list[tuple[dict[str, Any], int]] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        self.seen.append((dict(context.node_config), int(msg.content["config"]["round"])))
        if self.error is not None:
            raise self.error
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 12, "train-loss": 0.5})}), reply_to=msg)


@pytest.fixture
def trainer() -> Iterator[tuple[Path, _FakeApp, TrainerServer]]:
    with tempfile.TemporaryDirectory(prefix="trn") as tmp:  # a short path: sun_path holds 108 bytes
        app = _FakeApp()
        server = TrainerServer(Path(tmp) / "sock" / "trainer.sock", app, OWN)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.path, app, server
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _context(socket_path: Path) -> Context:
    # The node config the relay sees; the trainer must not take its data path from here.
    return Context(run_id=3, node_id=7, node_config={**OWN, "data": "/somewhere/else.csv",
                                                     "trainer": str(socket_path)},
                   state=RecordDict(), run_config={})


def test_relayed_train_comes_back_as_the_reply_and_the_trainer_uses_its_own_data_path(
    trainer: tuple[Path, _FakeApp, TrainerServer],
) -> None:
    path, app, _ = trainer
    msg = _message()
    reply = relay(msg, _context(path))
    assert reply.content["metrics"]["num-examples"] == 12
    assert reply.metadata.reply_to_message_id == "m1" and reply.metadata.run_id == 3
    [(node_config, round_no)] = app.seen
    assert node_config == OWN and round_no == 2


def test_a_failure_in_the_trainer_reaches_the_relay_with_its_reason(
    trainer: tuple[Path, _FakeApp, TrainerServer],
) -> None:
    path, app, _ = trainer
    app.error = ValueError("bank-a: the coordinator's data schema is not the one this institution declared")
    with pytest.raises(TrainerError, match="data schema"):
        relay(_message(), _context(path))


def test_the_trainer_socket_is_private_to_its_user(trainer: tuple[Path, _FakeApp, TrainerServer]) -> None:
    path, _, _ = trainer
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_relay_without_a_running_trainer_fails_and_names_the_socket() -> None:
    with pytest.raises(TrainerUnavailable, match="/nowhere/trainer.sock"):
        relay(_message(), _context(Path("/nowhere/trainer.sock")))


def test_the_relay_app_imports_neither_torch_nor_a_key_loader() -> None:
    probe = ("import sys, fl.relay_app; "
             "print(sorted(m for m in ('torch', 'fl.client_app', 'fl.signer.keys', 'ledger.pki') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
