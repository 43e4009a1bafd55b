"""The Fabric Gateway client without a network: what it signs, what it decodes, how it fails.

A fake Gateway service runs in-process on 127.0.0.1 and checks every signature the way a
peer would (the creator's certificate, ECDSA over SHA-256, low-S), so a request that is
built or signed wrongly fails here as it would against Fabric.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from fabric_protos.common import common_pb2, ledger_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.rpc import status_pb2

from ledger import pki
from ledger.errors import LedgerError
from ledger.fabric.blocks import block_header_hash, block_transactions, find_transaction
from ledger.fabric.gateway import (
    ChaincodeEventsError,
    CommitError,
    EndorseError,
    EvaluateError,
    Gateway,
    GatewayProtocolError,
    Identity,
    RetryPolicy,
    SubmitError,
    connect_from_profile,
    load_identity,
    load_signer,
    signer_from_key,
)
from ledger.fabric.gateway_errors import call, decode_error_details
from ledger.fabric.profile import ConnectionProfile, ProfileError
from ledger.fabric.proposals import (
    build_proposal,
    new_transaction_context,
    result_from_envelope,
)
from ledger.formats import P256_ORDER
from ledger.pki import KeyFileError

CHANNEL = "fedledger"
CHAINCODE = "fedaudit"
FAST_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_attempts=4)


# --- identities -----------------------------------------------------------------------


def _pem(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.init_ca("banka.example.com")


@pytest.fixture(scope="module")
def user(ca: pki.CertificateAuthority) -> tuple[ec.EllipticCurvePrivateKey, Identity]:
    key, cert = pki.make_tls_client_cert(ca, "user1@banka.example.com")
    return key, Identity("BankAMSP", _pem(cert))


def _verify(creator: bytes, signature: bytes, message: bytes) -> None:
    """Check a signature as a peer does: the creator's certificate key, SHA-256, low-S."""
    identity = identities_pb2.SerializedIdentity.FromString(creator)
    public = x509.load_pem_x509_certificate(identity.id_bytes).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    _, s = decode_dss_signature(signature)
    if s > P256_ORDER // 2:
        raise InvalidSignature("high-S signature")


# --- the fake Gateway service ----------------------------------------------------------


def _abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    details: list[tuple[str, str, str]],
) -> None:
    status = status_pb2.Status(code=code.value[0], message=message)
    for address, msp_id, text in details:
        status.details.add().Pack(
            gateway_pb2.ErrorDetail(address=address, msp_id=msp_id, message=text)
        )
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(code, message)


def prepared_envelope(signed: proposal_pb2.SignedProposal, result: bytes) -> common_pb2.Envelope:
    """The unsigned transaction a Fabric Gateway assembles from endorsed proposal responses."""
    proposal = proposal_pb2.Proposal.FromString(signed.proposal_bytes)
    header = common_pb2.Header.FromString(proposal.header)
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    action = proposal_pb2.ChaincodeAction(
        response=proposal_response_pb2.Response(status=200, payload=result),
        chaincode_id=chaincode_pb2.ChaincodeID(name=CHAINCODE),
    )
    response_payload = proposal_response_pb2.ProposalResponsePayload(
        proposal_hash=hashlib.sha256(signed.proposal_bytes).digest(),
        extension=action.SerializeToString(),
    )
    action_payload = transaction_pb2.ChaincodeActionPayload(
        chaincode_proposal_payload=proposal_pb2.ChaincodeProposalPayload(
            input=payload.input
        ).SerializeToString(),
        action=transaction_pb2.ChaincodeEndorsedAction(
            proposal_response_payload=response_payload.SerializeToString(),
            endorsements=[
                proposal_response_pb2.Endorsement(
                    endorser=identities_pb2.SerializedIdentity(
                        mspid=msp, id_bytes=b"cert"
                    ).SerializeToString(),
                    signature=b"sig",
                )
                for msp in ("CoordinatorMSP", "BankBMSP")
            ],
        ),
    )
    transaction = transaction_pb2.Transaction(
        actions=[
            transaction_pb2.TransactionAction(
                header=header.signature_header, payload=action_payload.SerializeToString()
            )
        ]
    )
    return common_pb2.Envelope(
        payload=common_pb2.Payload(
            header=header, data=transaction.SerializeToString()
        ).SerializeToString()
    )


def _invocation(signed: proposal_pb2.SignedProposal) -> tuple[bytes, list[bytes]]:
    proposal = proposal_pb2.Proposal.FromString(signed.proposal_bytes)
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input)
    header = common_pb2.Header.FromString(proposal.header)
    creator = common_pb2.SignatureHeader.FromString(header.signature_header).creator
    _verify(creator, signed.signature, signed.proposal_bytes)
    args = list(spec.chaincode_spec.input.args)
    return args[0], args[1:]


class FakeGateway(gateway_pb2_grpc.GatewayServicer):
    """A Gateway service that verifies signatures, records requests and fails on demand."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Any]] = defaultdict(list)
        self.failures: dict[str, deque[tuple[grpc.StatusCode, str, list[tuple[str, str, str]]]]] = (
            defaultdict(deque)
        )
        self.commit = (transaction_pb2.VALID, 7)
        self.height = 12
        self.tamper_header = False
        self.event_streams: deque[list[Any]] = deque()

    def fail(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str,
        *details: tuple[str, str, str],
        times: int = 1,
    ) -> None:
        for _ in range(times):
            self.failures[method].append((code, message, list(details)))

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.requests[method].append(request)
        if self.failures[method]:
            _abort(context, *self.failures[method].popleft())

    def Evaluate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Evaluate", request, context)
        function, args = _invocation(request.proposed_transaction)
        if function == b"GetChainInfo":
            info = ledger_pb2.BlockchainInfo(height=self.height, currentBlockHash=b"\x01" * 32)
            return gateway_pb2.EvaluateResponse(
                result=proposal_response_pb2.Response(status=200, payload=info.SerializeToString())
            )
        return gateway_pb2.EvaluateResponse(
            result=proposal_response_pb2.Response(status=200, payload=b"|".join([function, *args]))
        )

    def Endorse(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Endorse", request, context)
        function, args = _invocation(request.proposed_transaction)
        envelope = prepared_envelope(
            request.proposed_transaction, b"done:" + b"|".join([function, *args])
        )
        if self.tamper_header:
            payload = common_pb2.Payload.FromString(envelope.payload)
            header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
            header.channel_id = "another-channel"
            payload.header.channel_header = header.SerializeToString()
            envelope.payload = payload.SerializeToString()
        return gateway_pb2.EndorseResponse(prepared_transaction=envelope)

    def Submit(self, request: Any, context: grpc.ServicerContext) -> Any:
        envelope = request.prepared_transaction
        payload = common_pb2.Payload.FromString(envelope.payload)
        creator = common_pb2.SignatureHeader.FromString(payload.header.signature_header).creator
        _verify(creator, envelope.signature, envelope.payload)
        self._enter("Submit", request, context)
        return gateway_pb2.SubmitResponse()

    def CommitStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        inner = gateway_pb2.CommitStatusRequest.FromString(request.request)
        _verify(inner.identity, request.signature, request.request)
        self._enter("CommitStatus", inner, context)
        code, block = self.commit
        return gateway_pb2.CommitStatusResponse(result=code, block_number=block)

    def ChaincodeEvents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        inner = gateway_pb2.ChaincodeEventsRequest.FromString(request.request)
        _verify(inner.identity, request.signature, request.request)
        self.requests["ChaincodeEvents"].append(inner)
        script = self.event_streams.popleft() if self.event_streams else []
        for item in script:
            if item == "end":
                return
            if isinstance(item, grpc.StatusCode):
                _abort(context, item, "peer went away", [])
            yield item
        while context.is_active():
            time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[tuple[FakeGateway, grpc.Channel]]:
    service = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield service, channel
    channel.close()
    server.stop(grace=None)


@pytest.fixture
def gateway(
    fake: tuple[FakeGateway, grpc.Channel], user: tuple[ec.EllipticCurvePrivateKey, Identity]
) -> Gateway:
    key, identity = user
    return Gateway(fake[1], identity, signer_from_key(key), retry=FAST_RETRY)


# --- identities and signatures ----------------------------------------------------------


def test_tx_id_is_the_sha256_of_nonce_then_creator_and_is_written_into_the_proposal(user):
    _, identity = user
    nonce = bytes(range(24))
    context = new_transaction_context(identity.creator(), nonce=nonce)
    assert context.tx_id == hashlib.sha256(nonce + identity.creator()).hexdigest()

    proposal = proposal_pb2.Proposal.FromString(
        build_proposal(
            context, channel=CHANNEL, chaincode=CHAINCODE, function="GetFederation", args=["fed-1"]
        )
    )
    header = common_pb2.Header.FromString(proposal.header)
    assert common_pb2.ChannelHeader.FromString(header.channel_header).tx_id == context.tx_id
    signature_header = common_pb2.SignatureHeader.FromString(header.signature_header)
    assert (signature_header.nonce, signature_header.creator) == (nonce, identity.creator())


def test_two_transactions_never_share_a_nonce_or_an_id(user):
    _, identity = user
    first, second = (new_transaction_context(identity.creator()) for _ in range(2))
    assert len(first.nonce) == 24
    assert first.nonce != second.nonce and first.tx_id != second.tx_id


def test_creator_is_a_serialized_identity_naming_the_msp_and_the_certificate(user):
    _, identity = user
    decoded = identities_pb2.SerializedIdentity.FromString(identity.creator())
    assert (decoded.mspid, decoded.id_bytes) == ("BankAMSP", identity.credentials)


class _HighSKey:
    """A P-256 key whose signatures always come out in the high-S form."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key, self.curve = key, key.curve

    def sign(self, data: bytes, algorithm: Any) -> bytes:
        r, s = decode_dss_signature(self.key.sign(data, algorithm))
        return encode_dss_signature(r, s if s > P256_ORDER // 2 else P256_ORDER - s)


def test_signer_turns_a_high_s_signature_into_the_low_s_form_that_still_verifies(user):
    key, _ = user
    digest = hashlib.sha256(b"proposal bytes").digest()
    raw = _HighSKey(key).sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert decode_dss_signature(raw)[1] > P256_ORDER // 2

    signature = signer_from_key(_HighSKey(key))(digest)  # type: ignore[arg-type]

    assert decode_dss_signature(signature)[1] <= P256_ORDER // 2
    key.public_key().verify(signature, b"proposal bytes", ec.ECDSA(hashes.SHA256()))


def test_signer_signs_the_digest_it_is_given_not_a_hash_of_it(user):
    key, _ = user
    signature = signer_from_key(key)(hashlib.sha256(b"message").digest())
    key.public_key().verify(signature, b"message", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ValueError, match="32 bytes"):
        signer_from_key(key)(b"message")


def test_signer_refuses_a_key_that_is_not_p256():
    with pytest.raises(ValueError, match="P-256"):
        signer_from_key(ec.generate_private_key(ec.SECP384R1()))


def test_gateway_refuses_to_start_without_a_signer(fake, user):
    _, identity = user
    with pytest.raises(ValueError, match="signer is required"):
        Gateway(fake[1], identity, None)


def test_loading_a_missing_key_or_a_non_certificate_names_the_file(tmp_path: Path):
    with pytest.raises(KeyFileError, match="missing.key"):
        load_signer(tmp_path / "missing.key")
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(KeyFileError, match="cert.pem"):
        load_identity("BankAMSP", tmp_path / "cert.pem")


# --- proposals and envelopes -----------------------------------------------------------


def test_proposal_decodes_back_to_channel_chaincode_function_arguments_and_transient_data(user):
    _, identity = user
    context = new_transaction_context(identity.creator())
    proposal = proposal_pb2.Proposal.FromString(
        build_proposal(
            context,
            channel=CHANNEL,
            chaincode=CHAINCODE,
            function="fedaudit:RecordRound",
            args=["fed-1", b"\x00\xffraw"],
            transient={"secret": b"s3"},
        )
    )
    header = common_pb2.Header.FromString(proposal.header)
    channel_header = common_pb2.ChannelHeader.FromString(header.channel_header)
    assert channel_header.type == common_pb2.ENDORSER_TRANSACTION
    assert channel_header.channel_id == CHANNEL
    assert channel_header.timestamp.seconds > 1_600_000_000
    extension = proposal_pb2.ChaincodeHeaderExtension.FromString(channel_header.extension)
    assert extension.chaincode_id.name == CHAINCODE
    payload = proposal_pb2.ChaincodeProposalPayload.FromString(proposal.payload)
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(payload.input).chaincode_spec
    assert spec.chaincode_id.name == CHAINCODE
    assert list(spec.input.args) == [b"fedaudit:RecordRound", b"fed-1", b"\x00\xffraw"]
    assert dict(payload.TransientMap) == {"secret": b"s3"}


def test_result_is_read_out_of_the_prepared_envelope(user):
    key, identity = user
    context = new_transaction_context(identity.creator())
    proposal = build_proposal(
        context, channel=CHANNEL, chaincode=CHAINCODE, function="InitFederation"
    )
    signed = proposal_pb2.SignedProposal(
        proposal_bytes=proposal, signature=signer_from_key(key)(hashlib.sha256(proposal).digest())
    )
    assert result_from_envelope(prepared_envelope(signed, b'{"id":"fed-1"}')) == b'{"id":"fed-1"}'


def test_an_envelope_without_a_chaincode_action_is_a_protocol_error():
    empty = common_pb2.Envelope(
        payload=common_pb2.Payload(
            data=transaction_pb2.Transaction().SerializeToString()
        ).SerializeToString()
    )
    with pytest.raises(GatewayProtocolError, match="no chaincode action"):
        result_from_envelope(empty)
    with pytest.raises(GatewayProtocolError, match="does not decode"):
        result_from_envelope(common_pb2.Envelope(payload=b"\xff\xff\xff"))


# --- errors ----------------------------------------------------------------------------


def test_error_details_decode_from_the_grpc_status_trailer():
    status = status_pb2.Status(code=10, message="failed to endorse transaction")
    status.details.add().Pack(
        gateway_pb2.ErrorDetail(address="peer0:7051", msp_id="BankAMSP", message="denied")
    )
    status.details.add().Pack(status_pb2.Status(message="not an ErrorDetail, skipped"))
    metadata = (("other", "x"), ("grpc-status-details-bin", status.SerializeToString()))

    (detail,) = decode_error_details(metadata)
    assert (detail.address, detail.msp_id, detail.message) == ("peer0:7051", "BankAMSP", "denied")
    assert decode_error_details((("grpc-status-details-bin", b"\xff\xff"),)) == ()


def test_a_chaincode_refusal_surfaces_as_endorse_error_with_the_contracts_message(gateway, fake):
    service, _ = fake
    service.fail(
        "Endorse",
        grpc.StatusCode.ABORTED,
        "failed to endorse transaction, see attached details for more info",
        (
            "peer0.banka:7051",
            "BankAMSP",
            "chaincode response 500, NOT_FOUND: federation fed-9 does not exist",
        ),
    )
    contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)

    with pytest.raises(EndorseError) as caught:
        contract.submit("AdmitParticipant", "fed-9", "bank-a")

    error = caught.value
    assert isinstance(error, LedgerError)
    assert error.code == grpc.StatusCode.ABORTED
    assert error.chaincode_status == 500
    assert error.chaincode_message == "NOT_FOUND: federation fed-9 does not exist"
    assert error.details[0].msp_id == "BankAMSP"
    assert error.tx_id and len(error.tx_id) == 64
    text = str(error)
    assert "\n" not in text
    assert text.startswith("endorse failed: ABORTED")
    assert "peer0.banka:7051 (BankAMSP)" in text and error.tx_id in text
    assert isinstance(error.__cause__, grpc.RpcError)
    assert not service.requests["Submit"]


def test_an_evaluate_refusal_is_an_evaluate_error_with_the_chaincode_message(gateway, fake):
    service, _ = fake
    service.fail(
        "Evaluate",
        grpc.StatusCode.UNKNOWN,
        "evaluate call to endorser returned error: "
        "chaincode response 500, ACCESS_DENIED: no identity",
        ("peer0.banka:7051", "BankAMSP", "chaincode response 500, ACCESS_DENIED: no identity"),
    )
    with pytest.raises(EvaluateError) as caught:
        gateway.get_network(CHANNEL).get_contract(CHAINCODE).evaluate("GetFederation", "fed-1")
    assert caught.value.chaincode_message == "ACCESS_DENIED: no identity"
    assert len(service.requests["Evaluate"]) == 1


# --- retries ---------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, message: str = "down") -> None:
        self._code, self._message = code, message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[()]:
        return ()


class FakeClock:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _flaky(errors: list[grpc.RpcError], timeouts: list[float]) -> Any:
    def method(request: Any, *, timeout: float) -> str:
        timeouts.append(timeout)
        if errors:
            raise errors.pop(0)
        return "ok"

    return method


def test_transient_failures_are_retried_with_growing_pauses_inside_the_deadline():
    clock, timeouts = FakeClock(), []
    policy = RetryPolicy(
        initial_backoff=0.1, multiplier=2, max_attempts=5, sleep=clock.sleep, clock=clock.time
    )
    errors = [
        FakeRpcError(grpc.StatusCode.UNAVAILABLE),
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]

    assert (
        call(_flaky(errors, timeouts), None, timeout=5.0, retry=policy, error_type=SubmitError)
        == "ok"
    )

    assert clock.sleeps == [0.1, 0.2]
    assert timeouts == pytest.approx([5.0, 4.9, 4.7])  # each attempt gets what is left, not 5 s


def test_retries_stop_before_the_deadline_and_report_the_last_failure():
    clock, timeouts = FakeClock(), []
    policy = RetryPolicy(
        initial_backoff=0.4, multiplier=2, max_attempts=10, sleep=clock.sleep, clock=clock.time
    )
    errors = [FakeRpcError(grpc.StatusCode.UNAVAILABLE, f"down {i}") for i in range(10)]

    with pytest.raises(SubmitError) as caught:
        call(
            _flaky(errors, timeouts),
            None,
            timeout=1.5,
            retry=policy,
            error_type=SubmitError,
            tx_id="t1",
        )

    assert clock.sleeps == [0.4, 0.8]  # a third pause (1.6 s) would end after the deadline
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.retryable
    assert "down 2" in str(caught.value) and caught.value.tx_id == "t1"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_permanent_failures_are_not_retried(code):
    clock, timeouts = FakeClock(), []
    policy = RetryPolicy(sleep=clock.sleep, clock=clock.time)
    with pytest.raises(EndorseError):
        call(
            _flaky([FakeRpcError(code)], timeouts),
            None,
            timeout=5.0,
            retry=policy,
            error_type=EndorseError,
        )
    assert len(timeouts) == 1 and clock.sleeps == []


def test_a_tls_handshake_failure_is_not_retried_and_says_it_is_tls():
    clock, timeouts = FakeClock(), []
    policy = RetryPolicy(sleep=clock.sleep, clock=clock.time)
    error = FakeRpcError(
        grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Ssl handshake failed"
    )
    with pytest.raises(EvaluateError, match="TLS handshake failed") as caught:
        call(_flaky([error], timeouts), None, timeout=5.0, retry=policy, error_type=EvaluateError)
    assert len(timeouts) == 1 and not caught.value.retryable


def test_a_failed_submit_is_retried_with_the_same_signed_envelope_and_never_endorsed_again(
    gateway, fake
):
    service, _ = fake
    service.fail(
        "Submit",
        grpc.StatusCode.UNAVAILABLE,
        "no orderers could successfully process transaction",
        times=2,
    )

    result = (
        gateway.get_network(CHANNEL).get_contract(CHAINCODE).submit("InitFederation", "fed-1", "{}")
    )

    assert len(service.requests["Endorse"]) == 1
    envelopes = [r.prepared_transaction.SerializeToString() for r in service.requests["Submit"]]
    assert len(envelopes) == 3 and len(set(envelopes)) == 1
    assert {r.transaction_id for r in service.requests["Submit"]} == {result.tx_id}


def test_submit_fails_with_submit_error_when_the_orderers_stay_away(gateway, fake):
    service, _ = fake
    service.fail("Submit", grpc.StatusCode.UNAVAILABLE, "no orderers", times=10)
    # The transaction never commits: asking for its status runs out of time.
    service.fail("CommitStatus", grpc.StatusCode.DEADLINE_EXCEEDED, "not committed", times=10)
    with pytest.raises(SubmitError) as caught:
        gateway.get_network(CHANNEL).get_contract(CHAINCODE).submit("InitFederation", "fed-1", "{}")
    assert len(service.requests["Submit"]) == FAST_RETRY.max_attempts
    assert len(service.requests["Endorse"]) == 1
    assert caught.value.tx_id == service.requests["Endorse"][0].transaction_id
    # Its commit was looked for before the failure was reported, under the same tx id.
    assert {r.transaction_id for r in service.requests["CommitStatus"]} == {caught.value.tx_id}


def test_a_submit_refused_for_a_copy_already_ordered_returns_the_committed_result(gateway, fake):
    """A BFT ordering service may answer a transaction it has already ordered with an
    error; the transaction commits all the same and must not be reported as failed."""
    service, _ = fake
    service.fail("Submit", grpc.StatusCode.UNAVAILABLE,
                 "insufficient number of orderers could successfully process transaction", times=10)
    service.commit = (transaction_pb2.VALID, 9)

    result = gateway.get_network(CHANNEL).get_contract(CHAINCODE).submit("InitFederation", "fed-1", "{}")

    assert (result.status, result.block_number) == ("VALID", 9)
    assert result.result == b"done:InitFederation|fed-1|{}"
    assert len(service.requests["Endorse"]) == 1  # never endorsed again


# --- the submit and evaluate flows -------------------------------------------------------


def test_evaluate_returns_the_peers_result_for_a_signed_proposal(gateway, fake):
    service, _ = fake
    contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE, "fedaudit")
    assert (
        contract.evaluate("GetFederation", "fed-1", b"\x01") == b"fedaudit:GetFederation|fed-1|\x01"
    )
    assert service.requests["Evaluate"][0].channel_id == CHANNEL


def test_submit_returns_the_result_tx_id_and_block_after_a_signed_commit_status(gateway, fake):
    service, _ = fake
    service.commit = (transaction_pb2.VALID, 42)

    result = (
        gateway.get_network(CHANNEL)
        .get_contract(CHAINCODE)
        .submit("InitFederation", "fed-1", "{}", endorsing_orgs=["BankAMSP", "BankBMSP"])
    )

    assert result.result == b"done:InitFederation|fed-1|{}"
    assert (result.block_number, result.status) == (42, "VALID")
    endorse = service.requests["Endorse"][0]
    assert result.tx_id == endorse.transaction_id
    assert list(endorse.endorsing_organizations) == ["BankAMSP", "BankBMSP"]
    assert service.requests["CommitStatus"][0].transaction_id == result.tx_id


def test_a_transaction_ordered_but_invalid_raises_commit_error_with_the_validation_code(
    gateway, fake
):
    service, _ = fake
    service.commit = (transaction_pb2.MVCC_READ_CONFLICT, 9)
    with pytest.raises(CommitError) as caught:
        gateway.get_network(CHANNEL).get_contract(CHAINCODE).submit(
            "RecordRound", "fed-1", "1", "{}"
        )
    assert caught.value.validation_code == "MVCC_READ_CONFLICT"
    assert caught.value.block_number == 9 and caught.value.tx_id
    assert "MVCC_READ_CONFLICT in block 9" in str(caught.value)


def test_submit_async_returns_before_the_commit_and_asks_for_the_status_once(gateway, fake):
    service, _ = fake
    submitted = (
        gateway.get_network(CHANNEL)
        .get_contract(CHAINCODE)
        .submit_async("InitFederation", "fed-2", "{}")
    )
    assert submitted.result == b"done:InitFederation|fed-2|{}"
    assert not service.requests["CommitStatus"]

    first, second = submitted.status(timeout=2), submitted.status()

    assert first is second and first.successful and first.block_number == 7
    assert len(service.requests["CommitStatus"]) == 1


def test_a_prepared_transaction_with_another_header_is_never_signed_or_submitted(gateway, fake):
    service, _ = fake
    service.tamper_header = True
    with pytest.raises(GatewayProtocolError, match="refusing to sign"):
        gateway.get_network(CHANNEL).get_contract(CHAINCODE).submit("InitFederation", "fed-1", "{}")
    assert not service.requests["Submit"]


# --- chaincode events ------------------------------------------------------------------


def _events(block: int, *tx_ids: str) -> gateway_pb2.ChaincodeEventsResponse:
    return gateway_pb2.ChaincodeEventsResponse(
        block_number=block,
        events=[
            chaincode_event_pb2.ChaincodeEvent(
                chaincode_id=CHAINCODE, tx_id=t, event_name="RoundRecorded", payload=t.encode()
            )
            for t in tx_ids
        ],
    )


def test_chaincode_events_resume_after_a_dropped_stream_from_the_last_event_seen(gateway, fake):
    service, _ = fake
    service.event_streams.extend(
        [[_events(5, "a", "b"), grpc.StatusCode.UNAVAILABLE], [_events(5, "c"), _events(8, "d")]]
    )
    stream = gateway.get_network(CHANNEL).chaincode_events(CHAINCODE, start_block=3)

    received = [next(stream) for _ in range(4)]
    stream.close()

    assert [(e.block_number, e.tx_id) for e in received] == [(5, "a"), (5, "b"), (5, "c"), (8, "d")]
    assert received[0].payload == b"a" and received[0].event_name == "RoundRecorded"
    first, resumed = service.requests["ChaincodeEvents"]
    assert (first.start_position.specified.number, first.after_transaction_id) == (3, "")
    assert (resumed.start_position.specified.number, resumed.after_transaction_id) == (5, "b")
    assert stream.checkpoint == (8, "d")


def test_an_event_stream_from_the_next_commit_pins_the_current_height_so_a_reconnect_skips_nothing(
    gateway, fake
):
    service, _ = fake
    service.event_streams.extend([[grpc.StatusCode.UNAVAILABLE], [_events(12, "first")]])
    network = gateway.get_network(CHANNEL)
    assert network.get_chain_info().current_block_hash == "01" * 32

    with network.chaincode_events(CHAINCODE) as stream:
        assert next(stream).tx_id == "first"

    first, resumed = service.requests["ChaincodeEvents"]
    assert first.start_position.specified.number == resumed.start_position.specified.number == 12
    assert not first.start_position.HasField("next_commit")


def test_closing_an_event_stream_from_another_thread_ends_a_blocked_iteration(gateway, fake):
    service, _ = fake
    service.event_streams.append([_events(2, "x")])
    stream = gateway.get_network(CHANNEL).chaincode_events(CHAINCODE, start_block=0)
    assert next(stream).tx_id == "x"

    threading.Timer(0.2, stream.close).start()
    started = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - started < 5


def test_a_peer_that_keeps_ending_the_event_stream_is_reported_after_the_retries(gateway, fake):
    service, _ = fake
    service.event_streams.extend([["end"]] * 10)
    stream = gateway.get_network(CHANNEL).chaincode_events(CHAINCODE, start_block=0)
    with pytest.raises(ChaincodeEventsError, match="kept ending"):
        next(stream)
    assert len(service.requests["ChaincodeEvents"]) == FAST_RETRY.max_attempts


def test_a_refused_event_stream_raises_chaincode_events_error(gateway, fake):
    service, _ = fake
    service.event_streams.append([grpc.StatusCode.PERMISSION_DENIED])
    stream = gateway.get_network(CHANNEL).chaincode_events(CHAINCODE, start_block=0)
    with pytest.raises(ChaincodeEventsError) as caught:
        next(stream)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


# --- blocks ----------------------------------------------------------------------------


def _block_with(envelopes: list[common_pb2.Envelope], flags: bytes) -> common_pb2.Block:
    block = common_pb2.Block(
        header=common_pb2.BlockHeader(number=4),
        data=common_pb2.BlockData(data=[e.SerializeToString() for e in envelopes]),
        metadata=common_pb2.BlockMetadata(metadata=[b"", b"", flags, b"", b""]),
    )
    return block


def test_block_transactions_carry_tx_id_validation_code_creator_and_event(user):
    key, identity = user
    envelopes, ids = [], []
    for fed in ("fed-a", "fed-b"):
        context = new_transaction_context(identity.creator())
        proposal = build_proposal(
            context, channel=CHANNEL, chaincode=CHAINCODE, function="InitFederation", args=[fed]
        )
        signed = proposal_pb2.SignedProposal(proposal_bytes=proposal)
        envelope = prepared_envelope(signed, b"r")
        envelopes.append(envelope)
        ids.append(context.tx_id)
    block = _block_with(
        envelopes, bytes([transaction_pb2.VALID, transaction_pb2.MVCC_READ_CONFLICT])
    )

    first, second = block_transactions(block)

    assert (first.tx_id, first.validation_code, first.valid) == (ids[0], "VALID", True)
    assert (second.tx_id, second.validation_code, second.valid) == (
        ids[1],
        "MVCC_READ_CONFLICT",
        False,
    )
    assert first.creator_msp_id == "BankAMSP" and first.chaincode_id == CHAINCODE
    assert first.type == "ENDORSER_TRANSACTION"
    assert first.endorsers == ("CoordinatorMSP", "BankBMSP")
    assert find_transaction(block, ids[1]) == second
    assert find_transaction(block, "0" * 64) is None
    with pytest.raises(ValueError, match="validation flags"):
        block_transactions(_block_with(envelopes, bytes([0])))


def test_block_header_hash_is_sha256_of_the_asn1_der_header():
    header = common_pb2.BlockHeader(number=128, previous_hash=b"\xaa" * 32, data_hash=b"\xbb" * 32)
    der = bytes.fromhex("3048020200800420" + "aa" * 32 + "0420" + "bb" * 32)
    assert block_header_hash(header) == hashlib.sha256(der).digest()
    genesis = common_pb2.BlockHeader(number=0, data_hash=b"\x01")
    assert (
        block_header_hash(genesis) == hashlib.sha256(bytes.fromhex("30080201000400040101")).digest()
    )


# --- TLS and profiles ------------------------------------------------------------------


@pytest.fixture
def tls_server(ca: pki.CertificateAuthority) -> Iterator[tuple[int, bytes, FakeGateway]]:
    """The fake Gateway behind mutual TLS, with a certificate for peer0.banka.example.com only."""
    key, cert = pki.make_tls_server_cert(ca, ("peer0.banka.example.com",))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    credentials = grpc.ssl_server_credentials(
        [(key_pem, _pem(cert))], root_certificates=_pem(ca.cert), require_client_auth=True
    )
    service = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield port, _pem(ca.cert), service
    server.stop(grace=None)


def _client_tls(ca: pki.CertificateAuthority) -> tuple[bytes, bytes]:
    key, cert = pki.make_tls_client_cert(ca, "client.banka.example.com")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _pem(cert), key_pem


def test_connect_speaks_mutual_tls_to_the_server_name_given(tls_server, ca, user):
    port, ca_pem, _ = tls_server
    key, identity = user
    cert_pem, key_pem = _client_tls(ca)
    with Gateway.connect(
        f"127.0.0.1:{port}",
        tls_ca_pem=ca_pem,
        server_name="peer0.banka.example.com",
        identity=identity,
        signer=signer_from_key(key),
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
    ) as gateway:
        assert gateway.get_network(CHANNEL).get_contract(CHAINCODE).evaluate("Ping") == b"Ping"


def test_a_wrong_tls_server_name_fails_fast_and_is_named(tls_server, ca, user):
    port, ca_pem, _ = tls_server
    key, identity = user
    cert_pem, key_pem = _client_tls(ca)
    with Gateway.connect(
        f"127.0.0.1:{port}",
        tls_ca_pem=ca_pem,
        server_name="peer0.bankb.example.com",
        identity=identity,
        signer=signer_from_key(key),
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
    ) as gateway:
        started = time.monotonic()
        with pytest.raises(EvaluateError, match="TLS") as caught:
            gateway.get_network(CHANNEL).get_contract(CHAINCODE).evaluate("Ping")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 3  # not retried until the 5 s deadline


def _write_profile(tmp_path: Path, ca: pki.CertificateAuthority, port: int) -> ConnectionProfile:
    key, cert = pki.make_tls_client_cert(ca, "user1")
    pki.write_private_key(tmp_path / "user.key", key)
    pki.write_public_file(tmp_path / "user.crt", _pem(cert).decode())
    pki.write_public_file(tmp_path / "tlsca.crt", _pem(ca.cert).decode())
    tls_key, tls_cert = pki.make_tls_client_cert(ca, "tls-client")
    pki.write_private_key(tmp_path / "tls.key", tls_key)
    pki.write_public_file(tmp_path / "tls.crt", _pem(tls_cert).decode())
    peer = {
        "name": "peer0.banka",
        "endpoint": f"127.0.0.1:{port}",
        "server_name": "peer0.banka.example.com",
        "tls_ca": "tlsca.crt",
    }
    return ConnectionProfile.model_validate(
        {
            "name": "test",
            "channel": CHANNEL,
            "orderers": [],
            "orgs": {
                "BankAMSP": {
                    "msp_id": "BankAMSP",
                    "ca": {"cert": "tlsca.crt"},
                    "tls_ca": "tlsca.crt",
                    "peers": [peer],
                    "identities": {
                        "user": {"cert": "user.crt", "key": "user.key"},
                        "nokey": {"cert": "user.crt"},
                    },
                    "tls_client": {"cert": "tls.crt", "key": "tls.key"},
                },
                "AuditorMSP": {
                    "msp_id": "AuditorMSP",
                    "ca": {"cert": "tlsca.crt"},
                    "tls_ca": "tlsca.crt",
                    "identities": {"user": {"cert": "user.crt", "key": "user.key"}},
                    "tls_client": {"cert": "tls.crt", "key": "tls.key"},
                },
            },
        }
    ).resolved(tmp_path)


def test_connect_from_profile_uses_the_orgs_identity_and_tls_client_and_an_auditor_borrows_a_peer(
    tls_server, ca, tmp_path
):
    port, _, service = tls_server
    profile = _write_profile(tmp_path, ca, port)
    for msp in ("BankAMSP", "AuditorMSP"):
        with connect_from_profile(profile, msp) as gateway:
            assert gateway.identity.msp_id == msp
            assert gateway.get_network(CHANNEL).get_contract(CHAINCODE).evaluate("Ping") == b"Ping"
    with pytest.raises(ProfileError, match="no identity 'admin'"):
        connect_from_profile(profile, "BankAMSP", "admin")
    with pytest.raises(ProfileError, match="no private key"):
        connect_from_profile(profile, "BankAMSP", "nokey")
    with pytest.raises(ProfileError, match="no peer 'peer9'"):
        connect_from_profile(profile, "BankAMSP", peer="peer9")
