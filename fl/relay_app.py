"""A thin ClientApp: signs what leaves, and relays the work to the institution's trainer.

The default ClientApp (:mod:`fl.client_app`) is a fresh process per message that
imports torch and reads the institution's data before it can train — seconds of
start-up for milliseconds of training. This one imports neither torch nor anything
that holds a key: it forwards each train and evaluate message to the institution's
long-running trainer (:mod:`fl.trainer`, a sibling process of the SuperNode that runs
the same train and evaluate functions, warm) over a Unix socket, and signs the reply
with the same signing mod, outermost, through the institution's signer. The signature
covers exactly what leaves, as with the default app.

Node config (the SuperNode's ``--node-config``): ``participant``, ``signer`` (the
signer's socket) and ``trainer`` (the trainer's socket). The trainer trains on the data
*its own* node config names; the relay cannot point it elsewhere.

Select it in the app's ``pyproject.toml``: ``clientapp = "fl.relay_app:app"``.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.serde import context_to_proto, message_to_proto, recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fl import trainer_wire
from fl.signing import NoSigner, SignerSpec, make_signing_mod, socket_signer

__all__ = ["app", "make_relay_app", "relay"]


def _setting(context: Context, key: str) -> str:
    value = context.node_config.get(key)
    if not value:
        raise ValueError(f"node config lacks {key!r}: the relay ClientApp needs participant, signer and trainer")
    return str(value)


def relay(msg: Message, context: Context) -> Message:
    """Have the trainer named in the node config do ``msg``; its reply, unsigned."""
    content = trainer_wire.call(_setting(context, "trainer"), message_to_proto(msg).SerializeToString(),
                                context_to_proto(context).SerializeToString())
    proto = ProtoRecordDict()
    proto.ParseFromString(content)
    return Message(recorddict_from_proto(proto), reply_to=msg)


def _signer(context: Context) -> SignerSpec:
    participant = _setting(context, "participant")
    signer = context.node_config.get("signer")
    if not signer:
        raise NoSigner(f"{participant}: the node config names no signer socket (`signer`)")
    return SignerSpec(participant, socket_signer(str(signer)))


def make_relay_app() -> ClientApp:
    """The relay ClientApp: the signing mod outermost, train and evaluate done by the trainer."""
    app = ClientApp(mods=[make_signing_mod(_signer)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return relay(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return relay(msg, context)

    return app


app = make_relay_app()
