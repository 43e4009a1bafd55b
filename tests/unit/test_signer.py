"""The institution's signer: policy refusals, the journal's hash chain, the socket, the
ClientApp's signing path, and comparing the journal with the ledger."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fl.signer.client import SignerClient, SignerRefused
from fl.signer.journal import Journal, JournalError, verify_journal
from fl.signer.keys import SigningKey, pem_key
from fl.signer.ledger_view import current_round
from fl.signer.policy import LedgerRound, SignerPolicy
from fl.signer.reconcile import reconcile
from fl.signer.server import SignerServer, SocketError, prepare_socket_dir
from fl.signer.service import SigningService
from ledger import pki
from ledger.errors import LedgerUnavailable
from ledger.formats import P256_ORDER, EvaluationManifest, Manifest, verify
from ledger.records import (
    EvaluationEntry,
    EvaluationRecord,
    ModelCommit,
    RoundEntry,
    RoundRecord,
    RoundView,
    ScorerSpec,
    TxReceipt,
)
from tests.fixtures.flower import task_identity  # noqa: F401

FED, ME = "fed-a", "bank-a"
M0, M1, U1, U2 = "0" * 63 + "1", "a" * 64, "b" * 64, "c" * 64


class FakeLedger:
    """The ledger's current round, settable by the test; or unreachable."""

    def __init__(self, current: LedgerRound | None = LedgerRound(1, M0)) -> None:
        self.now = current
        self.calls = 0

    def current(self, federation: str) -> LedgerRound:
        self.calls += 1
        if self.now is None:
            raise LedgerUnavailable("peer down")
        return self.now

    def committed_model(self, federation: str, round: int) -> str | None:
        """Round r is committed when the current round is past it; its model is set by the test."""
        self.calls += 1
        if self.now is None:
            raise LedgerUnavailable("peer down")
        return self.committed.get(round) if round < self.now.round else None

    committed: dict[int, str] = {1: "a" * 64}


def manifest(round_: int = 1, base: str = M0, update: str = U1, examples: int = 100, federation: str = FED,
             participant: str = ME) -> Manifest:
    return Manifest(federation=federation, participant=participant, round=round_, base_model=base,
                    update=update, num_examples=examples)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return pki.keygen(tmp_path / "pki", ME, "BankAMSP").key


@pytest.fixture
def service(tmp_path: Path, key_file: Path) -> SigningService:
    return SigningService(SignerPolicy(ME, FED, 500), pem_key(key_file), Journal(tmp_path / "journal.jsonl"),
                          FakeLedger())


def ask(service: SigningService, m: Manifest, update: str | None = None) -> dict:
    return service.sign_manifest(m.to_bytes().decode(), update or m.update)


def journal_lines(service: SigningService) -> list[dict]:
    path = service.journal.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- the policy -------------------------------------------------------------------------


def test_a_manifest_the_policy_allows_is_signed_low_s_and_journalled(service: SigningService, key_file: Path) -> None:
    m = manifest()

    reply = ask(service, m)

    assert reply["ok"] is True
    verify(m.to_bytes(), reply["signature"], pki.load_private_key(key_file).public_key())
    entry = journal_lines(service)[-1]
    assert entry["decision"] == "signed" and entry["manifest_hash"] == m.hash() and entry["round"] == 1


@pytest.mark.parametrize(("m", "reason"), [
    (manifest(federation="fed-b"), "wrong_federation"),
    (manifest(participant="bank-b"), "wrong_participant"),
    (manifest(round_=2), "wrong_round"),
    (manifest(base=M1), "wrong_base_model"),
    (manifest(examples=501), "num_examples_exceeded"),
    (manifest(examples=0), "num_examples_exceeded"),
])
def test_a_manifest_outside_the_policy_is_refused_with_its_reason_and_journalled(
    service: SigningService, m: Manifest, reason: str,
) -> None:
    reply = ask(service, m)

    assert reply == {"ok": False, "reason": reason, "detail": reply["detail"]}
    assert reply["detail"]
    entry = journal_lines(service)[-1]
    assert entry["decision"] == "refused" and entry["reason"] == reason and "signature" not in entry


def test_a_second_different_manifest_for_a_signed_round_is_refused_as_equivocation(service: SigningService) -> None:
    first = ask(service, manifest(update=U1))

    second = ask(service, manifest(update=U2))

    assert first["ok"] and second["ok"] is False and second["reason"] == "equivocation"
    assert [e["decision"] for e in journal_lines(service)] == ["signed", "refused"]


def test_the_same_manifest_asked_again_gets_the_same_signature(service: SigningService) -> None:
    first, again = ask(service, manifest()), ask(service, manifest())

    assert again["ok"] and again["signature"] == first["signature"] and again["repeated"] is True
    assert [e["decision"] for e in journal_lines(service)] == ["signed", "repeated"]


def test_a_round_before_the_last_signed_one_is_refused_as_backwards(service: SigningService) -> None:
    ledger = service.ledger
    assert isinstance(ledger, FakeLedger)
    assert ask(service, manifest(round_=1))["ok"]
    ledger.now = LedgerRound(2, M1)
    assert ask(service, manifest(round_=2, base=M1))["ok"]
    ledger.now = LedgerRound(1, M0)  # a lying or rolled-back ledger view

    reply = ask(service, manifest(round_=1, update=U2))

    assert reply["reason"] == "round_backwards"


def test_rounds_signed_before_a_restart_still_count(tmp_path: Path, service: SigningService, key_file: Path) -> None:
    assert ask(service, manifest(update=U1))["ok"]
    restarted = SigningService(SignerPolicy(ME, FED, 500), pem_key(key_file), Journal(service.journal.path),
                               FakeLedger())

    assert ask(restarted, manifest(update=U2))["reason"] == "equivocation"


def test_an_unreachable_ledger_means_no_signature(service: SigningService) -> None:
    service.ledger.now = None  # type: ignore[attr-defined]

    reply = ask(service, manifest())

    assert reply["reason"] == "ledger_unavailable"


def test_an_update_digest_that_is_not_the_manifests_is_refused(service: SigningService) -> None:
    assert ask(service, manifest(update=U1), update=U2)["reason"] == "update_mismatch"


@pytest.mark.parametrize("text", ["not json", '{"v":1}', json.dumps(manifest().to_dict(), indent=1), "x" * 5000])
def test_a_request_that_is_not_a_canonical_manifest_is_refused_as_malformed(service: SigningService, text: str) -> None:
    reply = service.sign_manifest(text, U1)

    assert reply["reason"] == "malformed"
    assert journal_lines(service)[-1]["reason"] == "malformed"


def test_node_auth_signs_a_current_timestamp_and_refuses_a_manifest(service: SigningService, key_file: Path) -> None:
    import datetime as dt

    stamp = dt.datetime.now(dt.timezone.utc).isoformat()
    ok = service.node_auth(stamp)
    refused = service.node_auth(manifest().to_bytes().decode())
    stale = service.node_auth("2001-01-01T00:00:00+00:00")

    key = pki.load_private_key(key_file).public_key()
    key.verify(base64.b64decode(ok["signature"]), stamp.encode(), ec.ECDSA(hashes.SHA256()))
    assert refused["reason"] == "not_a_timestamp" and stale["reason"] == "stale_timestamp"
    assert journal_lines(service) == []  # node auth is not a signing decision


def test_the_current_round_follows_the_last_commit_else_the_initial_model() -> None:
    assert current_round(M0, []) == LedgerRound(1, M0)
    assert current_round(M0, [view(1, [], commit=M1)]) == LedgerRound(2, M1)
    with pytest.raises(LedgerUnavailable):
        current_round("", [])


# --- the journal ------------------------------------------------------------------------


def test_the_journal_verifies_and_reports_its_head(service: SigningService) -> None:
    ask(service, manifest())
    ask(service, manifest(round_=5))

    report = verify_journal(service.journal.path)

    assert report.ok and report.entries == 2 and report.head == (1, journal_lines(service)[1]["hash"])
    assert stat.S_IMODE(service.journal.path.stat().st_mode) == 0o600


def _fill(service: SigningService) -> list[str]:
    ask(service, manifest())
    ask(service, manifest(update=U2))
    ask(service, manifest(round_=3))
    return service.journal.path.read_text().splitlines()


def test_an_edited_journal_line_is_detected(service: SigningService) -> None:
    lines = _fill(service)
    edited = json.loads(lines[1])
    edited["reason"] = "wrong_round"  # hide the equivocation attempt
    lines[1] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    service.journal.path.write_text("\n".join(lines) + "\n")

    report = verify_journal(service.journal.path)

    assert not report.ok and "line 2: hash does not match" in report.problems[0]


def test_a_deleted_journal_line_is_detected(service: SigningService) -> None:
    lines = _fill(service)
    service.journal.path.write_text("\n".join([lines[0], lines[2]]) + "\n")

    report = verify_journal(service.journal.path)

    assert not report.ok and "seq 2, expected 1" in report.problems[0]


def test_a_journal_cut_short_is_detected_against_a_pin(service: SigningService) -> None:
    lines = _fill(service)
    head = verify_journal(service.journal.path).head
    service.journal.path.write_text("\n".join(lines[:2]) + "\n")

    assert verify_journal(service.journal.path).ok  # a shorter chain is consistent …
    report = verify_journal(service.journal.path, pin=head)  # … but not with the pin
    assert not report.ok and "cut short" in report.problems[0]


def test_a_signer_refuses_to_start_on_a_broken_journal(service: SigningService) -> None:
    lines = _fill(service)
    service.journal.path.write_text("\n".join(lines[1:]) + "\n")

    with pytest.raises(JournalError):
        Journal(service.journal.path)


# --- the socket -------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, service: SigningService):  # type: ignore[no-untyped-def]
    server = SignerServer(tmp_path / "run" / "s.sock", service)
    server.start()
    yield server
    server.stop()


def test_the_socket_is_0600_in_a_0700_directory(served: SignerServer) -> None:
    assert stat.S_IMODE(served.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.path.parent.stat().st_mode) == 0o700


def test_a_socket_directory_others_can_enter_is_refused(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)

    with pytest.raises(SocketError, match="let others in"):
        prepare_socket_dir(tmp_path / "open" / "s.sock")


def test_a_client_gets_signatures_and_refusals_over_the_socket(served: SignerServer, key_file: Path) -> None:
    client = SignerClient(served.path)
    m = manifest()

    signature = client.sign_manifest(m.to_bytes().decode(), m.update)
    with pytest.raises(SignerRefused) as refused:
        client.sign_manifest(manifest(update=U2).to_bytes().decode(), U2)

    verify(m.to_bytes(), signature, client.public_key())
    assert refused.value.reason == "equivocation"
    assert client.status()["last_signed_round"] == 1


def test_a_peer_of_another_uid_is_not_served(served: SignerServer) -> None:
    served.allowed_uids = frozenset({os.getuid() + 12345})

    with pytest.raises(SignerRefused) as refused:
        SignerClient(served.path).public_key()

    assert refused.value.reason == "peer_not_allowed"


# --- the attack, before and after ------------------------------------------------------


def test_a_clientapp_given_the_key_path_could_sign_a_second_manifest_in_the_institutions_name(
    tmp_path: Path, key_file: Path,
) -> None:
    """The old node config handed the coordinator's ClientApp the key's path: any code it
    ran could sign whatever it liked, and every signature verified."""
    from ledger.formats import sign

    stolen = pki.load_private_key(key_file)  # what `node_config["key"]` allowed
    first, second = manifest(update=U1), manifest(update=U2)

    for m in (first, second):
        verify(m.to_bytes(), sign(m.to_bytes(), stolen), stolen.public_key())  # two rounds-1 replies, both valid


def test_the_node_config_names_a_signer_socket_and_no_key(tmp_path: Path, key_file: Path) -> None:
    """What the institution service now gives the SuperNode and its ClientApp."""
    from fl.deploy.client import ClientService, ClientSpec

    from tests.fixtures.datasets import tiny_federation

    config, data = tiny_federation(tmp_path / "fed", ME, federation=FED)
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    signer = tmp_path / "run" / "s.sock"
    service = SigningService(SignerPolicy(ME, FED, 5), pem_key(key_file), Journal(tmp_path / "j.jsonl"), FakeLedger())
    server = SignerServer(signer, service)
    server.start()
    try:
        spec = ClientSpec(participant=ME, data=data, key=tmp_path / "absent.key", superlink="127.0.0.1:1",
                          root_certificates=ca, workdir=tmp_path, signer=signer, config=config, trainer=False)
        command, env = ClientService(spec).prepare()
    finally:
        server.stop()
    node_config = (tmp_path / "clients" / ME / "node-config.toml").read_text()
    assert '"signer"' in node_config and "key" not in node_config
    assert f'"config" = "{config.resolve()}"' in node_config  # the schema comes from the institution's file
    assert "--auth-supernode-private-key" not in command
    assert command[1:5] == ["-m", "fl.signer.supernode", "--signer-socket", str(signer)]
    assert not any(arg.endswith((".key", ".ssh")) for arg in command)
    assert "SOFTHSM2_CONF" not in env


def test_a_clientapp_asking_twice_for_one_round_is_refused_by_the_signer(served: SignerServer) -> None:
    """The same attack through the ClientApp's only way to sign now: the signer's socket."""
    from fl.signing import socket_signer

    sign = socket_signer(served.path)
    sign(manifest(update=U1))

    with pytest.raises(SignerRefused) as refused:
        sign(manifest(update=U2))

    assert refused.value.reason == "equivocation"
    assert journal_lines(served.service)[-1]["reason"] == "equivocation"


def test_a_node_config_without_a_signer_cannot_sign(tmp_path: Path) -> None:
    from flwr.app import Context, RecordDict

    from fl.client_app import node_config_resolver
    from fl.signing import NoSigner
    from tests.fixtures.datasets import tiny_federation

    config, data = tiny_federation(tmp_path, ME, federation=FED)
    ctx = Context(run_id=1, node_id=1,
                  node_config={"participant": ME, "data": str(data), "config": str(config), "key": "/k.key"},
                  state=RecordDict(), run_config={})
    runtime = node_config_resolver(ctx)

    assert runtime.key is None  # a key path in the node config is never read
    with pytest.raises(NoSigner):
        runtime.manifest_signer()


def test_the_supernode_auth_key_signs_through_the_signer_and_cannot_be_exported(served: SignerServer) -> None:
    import datetime as dt

    from fl.signer.supernode import SignerBackedKey

    key = SignerBackedKey(SignerClient(served.path))
    stamp = dt.datetime.now(dt.timezone.utc).isoformat().encode()

    signature = key.sign(stamp, ec.ECDSA(hashes.SHA256()))

    key.public_key().verify(signature, stamp, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(TypeError):
        key.private_bytes()  # type: ignore[call-arg]
    with pytest.raises(SignerRefused):
        key.sign(manifest().to_bytes(), ec.ECDSA(hashes.SHA256()))


# --- journal and ledger agree ----------------------------------------------------------


def view(round_: int, entries: list[RoundEntry], commit: str | None = None) -> RoundView:
    tx = TxReceipt(tx_id="t", block_number=1, timestamp_ms=0)
    record = RoundRecord(round=round_, base_model=M0, scorer=ScorerSpec(), entries=entries)
    return RoundView(federation=FED, round=round_, record=record, record_tx=tx,
                     commit=ModelCommit(round=round_, base_model=M0, model=commit, accepted=[], weights={})
                     if commit else None, commit_tx=tx if commit else None)


def entry_for(m: Manifest, signature: str, status: str = "accepted", reason: str | None = None) -> RoundEntry:
    return RoundEntry(participant=m.participant, status=status, reason=reason, manifest=m.to_bytes().decode(),
                      manifest_hash=m.hash(), signature=signature, update=m.update, num_examples=m.num_examples)


def test_journal_and_ledger_agree_when_every_signed_reply_is_recorded(service: SigningService) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    ask(service, manifest(update=U2))  # refused: not on the ledger, not expected there

    report = reconcile(service.journal.path, [view(1, [entry_for(m1, sig)], commit=M1)], ME, FED)

    assert report.ok, report.problems
    assert report.signed == [{"round": 1, "manifest_hash": m1.hash(), "status": "accepted", "reason": None,
                              "receipt": None}]
    assert report.without_receipt == [1]
    assert report.refused == 1


def test_a_signed_reply_missing_from_the_ledger_is_a_problem(service: SigningService) -> None:
    ask(service, manifest())
    dropped = RoundEntry(participant=ME, status="rejected", reason="no_reply")

    report = reconcile(service.journal.path, [view(1, [dropped], commit=M1)], ME, FED)

    assert not report.ok and "is not on the ledger (it records rejected:no_reply" in report.problems[0]


def test_an_accepted_reply_the_signer_never_signed_is_a_problem(service: SigningService, tmp_path: Path) -> None:
    foreign = manifest(update=U2)
    stranger = ec.generate_private_key(ec.SECP256R1())
    from ledger.formats import sign

    report = reconcile(service.journal.path, [view(1, [entry_for(foreign, sign(foreign.to_bytes(), stranger))])],
                       ME, FED)

    assert not report.ok and "never signed" in report.problems[0]


def test_a_rejected_forgery_is_listed_not_a_problem_and_later_rounds_are_pending(service: SigningService) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    service.ledger.now = LedgerRound(2, M1)  # type: ignore[attr-defined]
    ask(service, manifest(round_=2, base=M1))
    forged = entry_for(manifest(update=U2), sig, status="rejected", reason="bad_signature")

    report = reconcile(service.journal.path, [view(1, [entry_for(m1, sig), forged], commit=M1)], ME, FED)

    assert report.ok, report.problems
    assert report.pending == [2]
    assert report.stopped_forgeries[0]["reason"] == "bad_signature"


def test_low_s_holds_for_many_signatures(service: SigningService) -> None:
    for n in range(1, 30):
        service.ledger.now = LedgerRound(n, M0)  # type: ignore[attr-defined]
        der = base64.b64decode(ask(service, manifest(round_=n))["signature"])
        assert decode_dss_signature(der)[1] <= P256_ORDER // 2


def test_a_signing_key_is_a_plain_digest_signer(key_file: Path) -> None:
    key: SigningKey = pem_key(key_file)

    assert len(key.sign_digest(b"\x00" * 32)) >= 8 and key.describe.startswith("file:")


# --- evaluation signatures --------------------------------------------------------------


def evaluation(round_: int = 1, model: str = M1, accuracy: int = 800_000, examples: int = 40,
               federation: str = FED) -> EvaluationManifest:
    return EvaluationManifest(federation=federation, participant=ME, round=round_, model=model,
                              num_examples=examples, accuracy_ppm=accuracy, auc_ppm=700_000, log_loss_ppm=500_000)


@pytest.fixture
def after_round_one(service: SigningService) -> SigningService:
    service.ledger.now = LedgerRound(2, M1)  # type: ignore[attr-defined]
    return service


def ask_evaluation(service: SigningService, m: EvaluationManifest) -> dict:
    return service.sign_evaluation(m.to_bytes().decode())


def test_an_evaluation_of_the_committed_model_is_signed_and_journalled_as_an_evaluation(
    after_round_one: SigningService, key_file: Path,
) -> None:
    m = evaluation()

    reply = ask_evaluation(after_round_one, m)

    verify(m.to_bytes(), reply["signature"], pki.load_private_key(key_file).public_key())
    entry = journal_lines(after_round_one)[-1]
    assert (entry["decision"], entry["kind"], entry["manifest_hash"]) == ("signed", "evaluation", m.hash())


def test_a_second_evaluation_signature_for_a_round_is_refused_and_journalled(after_round_one: SigningService) -> None:
    first = ask_evaluation(after_round_one, evaluation(accuracy=800_000))

    second = ask_evaluation(after_round_one, evaluation(accuracy=990_000))
    again = ask_evaluation(after_round_one, evaluation(accuracy=800_000))

    assert first["ok"] and second["reason"] == "equivocation"
    assert again == {"ok": True, "signature": first["signature"], "repeated": True}
    assert [e["decision"] for e in journal_lines(after_round_one)] == ["signed", "refused", "repeated"]


@pytest.mark.parametrize(("m", "reason"), [
    (evaluation(model=U1), "wrong_model"),
    (evaluation(round_=2), "not_committed"),
    (evaluation(federation="fed-b"), "wrong_federation"),
    (evaluation(examples=501), "num_examples_exceeded"),
])
def test_an_evaluation_outside_the_policy_is_refused_with_its_reason_and_journalled(
    after_round_one: SigningService, m: EvaluationManifest, reason: str,
) -> None:
    reply = ask_evaluation(after_round_one, m)

    assert (reply["ok"], reply["reason"]) == (False, reason)
    entry = journal_lines(after_round_one)[-1]
    assert (entry["decision"], entry["reason"], entry["kind"]) == ("refused", reason, "evaluation")


def test_an_update_manifest_sent_as_an_evaluation_is_refused_as_malformed(after_round_one: SigningService) -> None:
    reply = after_round_one.sign_evaluation(manifest().to_bytes().decode())

    assert reply["reason"] == "malformed"


def test_an_evaluation_signature_does_not_use_up_the_rounds_update_signature(
    tmp_path: Path, after_round_one: SigningService, key_file: Path,
) -> None:
    assert ask_evaluation(after_round_one, evaluation())["ok"]
    assert ask(after_round_one, manifest(round_=2, base=M1))["ok"]

    restarted = SigningService(SignerPolicy(ME, FED, 500), pem_key(key_file), Journal(after_round_one.journal.path),
                               after_round_one.ledger)

    assert restarted.last_signed_round == 2
    assert ask_evaluation(restarted, evaluation(accuracy=1))["reason"] == "equivocation"


def test_a_client_gets_an_evaluation_signature_over_the_socket(served: SignerServer) -> None:
    served.service.ledger.now = LedgerRound(2, M1)  # type: ignore[attr-defined]
    client = SignerClient(served.path)
    m = evaluation()

    signature = client.sign_evaluation(m.to_bytes().decode())

    verify(m.to_bytes(), signature, client.public_key())
    assert client.status()["last_evaluated_round"] == 1


def evaluated_view(round_: int, entries: list[EvaluationEntry] | None) -> RoundView:
    base = view(round_, [], commit=M1)
    record = None if entries is None else EvaluationRecord(round=round_, model=M1, entries=entries)
    return base.model_copy(update={"evaluation": record})


def evaluation_entry(m: EvaluationManifest, signature: str, status: str = "accepted",
                     reason: str | None = None) -> EvaluationEntry:
    return EvaluationEntry(participant=m.participant, status=status, reason=reason, manifest=m.to_bytes().decode(),
                           manifest_hash=m.hash(), signature=signature, num_examples=m.num_examples,
                           accuracy_ppm=m.accuracy_ppm, auc_ppm=m.auc_ppm, log_loss_ppm=m.log_loss_ppm)


def test_signed_evaluations_reconcile_with_the_recorded_evaluation(after_round_one: SigningService) -> None:
    m = evaluation()
    sig = ask_evaluation(after_round_one, m)["signature"]

    agree = reconcile(after_round_one.journal.path, [evaluated_view(1, [evaluation_entry(m, sig)])], ME, FED)
    dropped = reconcile(after_round_one.journal.path,
                        [evaluated_view(1, [EvaluationEntry(participant=ME, status="rejected", reason="no_reply")])],
                        ME, FED)

    assert agree.ok, agree.problems
    assert agree.evaluations == [{"round": 1, "manifest_hash": m.hash(), "status": "accepted", "reason": None}]
    assert not dropped.ok and "signed evaluation" in dropped.problems[0]


def test_an_accepted_evaluation_the_signer_never_signed_is_a_problem(service: SigningService) -> None:
    from ledger.formats import sign

    foreign = evaluation(accuracy=999_000)
    stranger = ec.generate_private_key(ec.SECP256R1())

    report = reconcile(service.journal.path,
                       [evaluated_view(1, [evaluation_entry(foreign, sign(foreign.to_bytes(), stranger))])], ME, FED)

    assert not report.ok and "evaluation" in report.problems[0] and "never signed" in report.problems[0]


# --- the coordinator's receipts --------------------------------------------------------


def coordinator(tmp_path: Path, name: str = "coordinator"):  # type: ignore[no-untyped-def]
    from ledger.identity import Credentials, signer_from_key
    from ledger.records import Identity

    key, cert, _ = pki.demo_identity(tmp_path / "coord-pki", name, "CoordinatorMSP")
    return Credentials(Identity(msp_id="CoordinatorMSP", cert_pem=pki.certificate_pem(cert)), signer_from_key(key))


def receipt_for(credentials, m: Manifest | None, status: str = "accepted", reason: str | None = None,
                participant: str = ME, record_tx: str = "t") -> dict:  # type: ignore[no-untyped-def]
    from ledger.receipts import Receipt, sign_receipt

    receipt = Receipt(federation=FED, round=m.round if m else 1, participant=participant,
                      manifest_hash=m.hash() if m else None, decision=status, reason=reason, record_tx=record_tx)
    return sign_receipt(receipt, credentials).model_dump(mode="json")


def test_a_receipt_that_agrees_with_the_ledger_is_journalled_and_shown_beside_the_decision(
        service: SigningService, tmp_path: Path) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    assert service.record_receipt(receipt_for(coordinator(tmp_path), m1))["ok"]
    assert service.record_receipt(receipt_for(coordinator(tmp_path), m1)) == {"ok": True, "repeated": True}

    report = reconcile(service.journal.path, [view(1, [entry_for(m1, sig)], commit=M1)], ME, FED)

    assert report.ok, report.problems
    assert report.signed[0]["receipt"] == {"status": "accepted", "reason": None}
    assert report.without_receipt == []
    assert [e.get("kind") for e in journal_lines(service)] == [None, "receipt"]


def test_a_receipt_the_ledger_contradicts_is_a_problem(service: SigningService, tmp_path: Path) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    service.record_receipt(receipt_for(coordinator(tmp_path), m1))  # the coordinator said: accepted
    recorded = entry_for(m1, sig, status="rejected", reason="outlier")  # the ledger says: outlier

    report = reconcile(service.journal.path, [view(1, [recorded], commit=M1)], ME, FED)

    assert not report.ok
    assert "the receipt says accepted:None, the ledger says rejected:outlier" in report.problems[0]


def test_a_receipt_naming_another_record_transaction_or_manifest_is_a_problem(
        service: SigningService, tmp_path: Path) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    service.record_receipt(receipt_for(coordinator(tmp_path), manifest(update=U2), record_tx="other"))

    report = reconcile(service.journal.path, [view(1, [entry_for(m1, sig)], commit=M1)], ME, FED)

    assert not report.ok
    assert any("not the one signed" in p for p in report.problems)
    assert any("names record transaction" in p for p in report.problems)


def test_a_receipt_by_another_key_than_the_coordinators_first_is_refused_and_reported(
        service: SigningService, tmp_path: Path) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    assert service.record_receipt(receipt_for(coordinator(tmp_path), m1))["ok"]
    impostor = coordinator(tmp_path, "impostor")

    refused = service.record_receipt(receipt_for(impostor, m1, status="rejected", reason="outlier"))

    assert refused["reason"] == "unknown_coordinator"
    # The pin survives a restart: it is read back from the journal.
    again = SigningService(service.policy, service.key, Journal(service.journal.path), FakeLedger())
    assert again.record_receipt(receipt_for(impostor, m1, reason="duplicate"))["reason"] == "unknown_coordinator"
    report = reconcile(service.journal.path, [view(1, [entry_for(m1, sig)], commit=M1)], ME, FED)
    assert not report.ok and "a receipt was refused (unknown_coordinator" in report.problems[0]


def test_a_tampered_receipt_or_one_for_another_participant_is_refused(service: SigningService,
                                                                       tmp_path: Path) -> None:
    m1 = manifest()
    signed = receipt_for(coordinator(tmp_path), m1)
    signed["receipt"] = signed["receipt"].replace('"accepted"', '"rejected"')

    assert service.record_receipt(signed)["reason"] == "bad_signature"
    other = service.record_receipt(receipt_for(coordinator(tmp_path), m1, participant="bank-b"))
    assert other["reason"] == "wrong_participant"
    assert service.record_receipt({"receipt": 3})["reason"] == "malformed"
    assert [e["decision"] for e in journal_lines(service) if e.get("kind") == "receipt"] == ["refused", "refused"]


def test_a_rejection_the_evidence_does_not_support_is_a_problem_of_audit_mine(service: SigningService) -> None:
    m1 = manifest()
    sig = ask(service, m1)["signature"]
    recorded = entry_for(m1, sig, status="rejected", reason="outlier")

    report = reconcile(service.journal.path, [view(1, [recorded], commit=M1)], ME, FED,
                       check_rejection=lambda v, e: "its update is within 10× the median change")

    assert not report.ok
    assert "rejected as outlier, which the evidence does not support" in report.problems[0]


@pytest.mark.usefixtures("task_identity")
def test_a_clientapp_hands_the_receipt_in_its_message_to_the_signer(served: SignerServer, tmp_path: Path) -> None:
    from flwr.app import ConfigRecord, Message, RecordDict

    from fl.client_app import ClientRuntime, hand_over_receipt
    from ledger.receipts import RECEIPT_RECORD

    runtime = ClientRuntime(participant=ME, key=None, load_data=lambda: (None, None), signer=str(served.path))
    signed = receipt_for(coordinator(tmp_path), manifest(), status="rejected", reason="outlier")
    message = Message(RecordDict({RECEIPT_RECORD: ConfigRecord(signed)}), dst_node_id=1, message_type="evaluate")

    hand_over_receipt(runtime, message)

    entries = [e for e in journal_lines(served.service) if e.get("kind") == "receipt"]
    assert [(e["decision"], e["status"], e["status_reason"]) for e in entries] == [("received", "rejected", "outlier")]
