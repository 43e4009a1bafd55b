"""The Fabric Gateway client against a real Fabric network running the ``fedaudit`` chaincode.

The network is shared: every test works on federations with fresh random ids, never
stops or reconfigures anything, and calls the chaincode one transaction at a time.
``fabric_profile`` is the session network's connection profile (tests/integration/conftest.py).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2

from ledger.fabric.blocks import block_data_hash, block_header_hash, find_transaction
from ledger.fabric.gateway import (
    ChaincodeEvent,
    ChaincodeEventsError,
    CommitError,
    Contract,
    EndorseError,
    EvaluateError,
    Gateway,
    Network,
    SubmitResult,
    connect_from_profile,
    load_identity,
    load_signer,
    signer_from_key,
)
from ledger.fabric.profile import ConnectionProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICY = json.dumps({"auditor_msps": ["AuditorMSP"]})


@pytest.fixture(scope="module")
def coordinator(fabric_profile: ConnectionProfile) -> Iterator[Gateway]:
    with connect_from_profile(fabric_profile, "CoordinatorMSP") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def network(coordinator: Gateway, fabric_profile: ConnectionProfile) -> Network:
    return coordinator.get_network(fabric_profile.channel)


@pytest.fixture(scope="module")
def contract(network: Network, fabric_profile: ConnectionProfile) -> Contract:
    return network.get_contract(fabric_profile.chaincode)


def fresh_id() -> str:
    return "gw-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def created(contract: Contract) -> tuple[str, SubmitResult]:
    """One federation created by the coordinator for this module's read-only checks."""
    fed = fresh_id()
    return fed, contract.submit("InitFederation", fed, POLICY)


def test_submit_returns_the_chaincode_result_with_tx_id_and_block(created, network):
    fed, result = created
    assert json.loads(result.result)["id"] == fed
    assert len(result.tx_id) == 64 and int(result.tx_id, 16) >= 0
    assert result.block_number >= 1 and result.status == "VALID"
    status = network.commit_status(result.tx_id, timeout=10)
    assert (status.name, status.block_number) == ("VALID", result.block_number)


def test_evaluate_reads_what_the_submit_committed(created, contract):
    fed, result = created
    federation = json.loads(contract.evaluate("GetFederation", fed))
    assert federation["coordinator_msp"] == "CoordinatorMSP"
    assert federation["created_tx"] == result.tx_id


def test_submit_async_returns_the_result_first_and_status_waits_for_the_commit(contract, network):
    fed = fresh_id()
    submitted = contract.submit_async("InitFederation", fed, POLICY)
    assert json.loads(submitted.result)["id"] == fed

    status = submitted.status(timeout=30)

    assert status.successful and status.name == "VALID" and status.tx_id == submitted.tx_id
    assert network.get_chain_info().height > status.block_number


def test_chaincode_refusals_surface_with_the_contracts_message(created, contract, fabric_profile):
    fed, _ = created
    with pytest.raises(EndorseError) as duplicate:
        contract.submit("InitFederation", fed, POLICY)
    assert duplicate.value.chaincode_message.startswith("DUPLICATE: federation")
    assert duplicate.value.tx_id and duplicate.value.details
    assert duplicate.value.details[0].msp_id in {"CoordinatorMSP", "BankAMSP", "BankBMSP"}

    with pytest.raises(EvaluateError) as missing:
        contract.evaluate("GetFederation", fresh_id())
    assert missing.value.chaincode_message.startswith("NOT_FOUND: federation")

    with connect_from_profile(fabric_profile, "BankAMSP") as bank:
        bank_contract = bank.get_network(fabric_profile.channel).get_contract(
            fabric_profile.chaincode
        )
        with pytest.raises(EndorseError) as denied:
            bank_contract.submit("AdmitParticipant", fed, "bank-a")
    assert denied.value.chaincode_message.startswith("ACCESS_DENIED: ")


def test_get_transaction_by_id_shows_the_transaction_valid(created, network):
    _, result = created
    processed = network.get_transaction_by_id(result.tx_id)
    assert processed.validationCode == 0  # VALID
    payload = common_pb2.Payload.FromString(processed.transactionEnvelope.payload)
    assert common_pb2.ChannelHeader.FromString(payload.header.channel_header).tx_id == result.tx_id


def test_get_block_by_number_returns_the_block_holding_the_transaction_endorsed_by_a_majority(
    created, network
):
    fed, result = created
    block = network.get_block_by_number(result.block_number)

    transaction = find_transaction(block, result.tx_id)

    assert block.header.number == result.block_number
    assert transaction is not None and transaction.valid
    assert transaction.creator_msp_id == "CoordinatorMSP" and transaction.chaincode_id == "fedaudit"
    assert len(set(transaction.endorsers)) >= 2  # MAJORITY of three peer organisations
    assert block_data_hash(block) == block.header.data_hash
    assert network.get_block_by_tx_id(result.tx_id).header.number == result.block_number


def test_chain_info_hashes_chain_the_last_blocks(network):
    info = network.get_chain_info()
    last = network.get_block_by_number(info.height - 1)
    before = network.get_block_by_number(info.height - 2)
    assert block_header_hash(last.header).hex() == info.current_block_hash
    assert last.header.previous_hash.hex() == info.previous_block_hash
    assert block_header_hash(before.header) == last.header.previous_hash


def test_named_endorsing_organisations_are_the_ones_that_endorse(contract, network):
    result = contract.submit(
        "InitFederation", fresh_id(), POLICY, endorsing_orgs=["CoordinatorMSP", "BankBMSP"]
    )
    transaction = find_transaction(network.get_block_by_number(result.block_number), result.tx_id)
    assert transaction is not None and set(transaction.endorsers) == {"CoordinatorMSP", "BankBMSP"}


def test_two_writes_of_one_key_ordered_together_leave_one_valid_and_one_mvcc_conflict(contract):
    # The second is endorsed before the first commits (the channel cuts blocks every
    # 100 ms), so both read "no such federation"; the peer then refuses the second.
    for _ in range(5):
        fed = fresh_id()
        first = contract.submit_async("InitFederation", fed, POLICY)
        try:
            second = contract.submit_async("InitFederation", fed, POLICY)
        except EndorseError:
            first.wait(30)
            continue  # the first had already committed: try again with a new id
        assert first.wait(30).status == "VALID"
        with pytest.raises(CommitError) as caught:
            second.wait(30)
        assert caught.value.validation_code == "MVCC_READ_CONFLICT"
        assert caught.value.tx_id == second.tx_id and caught.value.block_number >= 1
        return
    pytest.fail("could not get two endorsements in before the first commit in 5 tries")


def _collect(
    stream: Iterator[ChaincodeEvent], wanted: set[str], count: int, seconds: float
) -> list[ChaincodeEvent]:
    """Events about the federations ``wanted`` (others share the network), up to ``count``."""
    watchdog = threading.Timer(seconds, stream.close)  # type: ignore[attr-defined]
    watchdog.start()
    try:
        found = []
        for event in stream:
            if json.loads(event.payload).get("federation") in wanted:
                found.append(event)
                if len(found) == count:
                    break
        return found
    finally:
        watchdog.cancel()
        stream.close()  # type: ignore[attr-defined]


def test_chaincode_events_stream_from_a_block_and_resume_after_an_event(created, contract, network):
    fed, result = created
    in_block = find_transaction(network.get_block_by_number(result.block_number), result.tx_id)
    assert in_block is not None and in_block.event_name == "FederationCreated", (
        f"the committed transaction {result.tx_id} carries no chaincode event: the chaincode "
        "server does not send the events the contract sets (fabric-chaincode-python defect 2)"
    )
    (event,) = _collect(
        network.chaincode_events("fedaudit", start_block=result.block_number), {fed}, 1, 20
    )
    assert (event.block_number, event.tx_id) == (result.block_number, result.tx_id)
    assert (event.chaincode_id, event.event_name) == ("fedaudit", "FederationCreated")
    assert json.loads(event.payload) == {"coordinator_msp": "CoordinatorMSP", "federation": fed}

    fed2 = fresh_id()
    later = contract.submit("InitFederation", fed2, POLICY)
    resumed = network.chaincode_events(
        "fedaudit", start_block=event.block_number, after_tx_id=event.tx_id
    )
    (next_event,) = _collect(resumed, {fed, fed2}, 1, 20)
    assert (next_event.tx_id, next_event.block_number) == (later.tx_id, later.block_number)


def test_an_auditor_with_no_peer_of_its_own_queries_through_another_orgs_peer(
    created, fabric_profile
):
    fed, _ = created
    with connect_from_profile(fabric_profile, "AuditorMSP") as auditor:
        contract = auditor.get_network(fabric_profile.channel).get_contract(
            fabric_profile.chaincode
        )
        assert json.loads(contract.evaluate("GetFederation", fed))["id"] == fed


def test_the_peer_accepts_a_signed_chaincode_events_request(network):
    stream = network.chaincode_events("fedaudit", start_block=0)
    threading.Timer(1.5, stream.close).start()
    # Nothing may arrive (the chaincode may send no events); a refused request would raise.
    assert all(event.chaincode_id == "fedaudit" for event in stream)


def _coordinator_gateway(
    profile: ConnectionProfile, *, server_name: str | None = None, signer=None
) -> Gateway:
    """A Gateway to the coordinator's peer built by hand, to vary one thing at a time."""
    org = profile.org("CoordinatorMSP")
    peer, keys = org.peers[0], org.identities["user"]
    return Gateway.connect(
        peer.endpoint,
        tls_ca_pem=peer.tls_ca.read_bytes(),
        server_name=server_name or peer.server_name,
        identity=load_identity("CoordinatorMSP", keys.cert),
        signer=signer or load_signer(keys.key),
        client_cert_pem=org.tls_client.cert.read_bytes() if org.tls_client else None,
        client_key_pem=org.tls_client.key.read_bytes()
        if org.tls_client and org.tls_client.key
        else None,
    )


def test_requests_signed_by_a_key_that_is_not_the_identitys_are_refused_by_the_peer(fabric_profile):
    stranger = signer_from_key(ec.generate_private_key(ec.SECP256R1()))
    with _coordinator_gateway(fabric_profile, signer=stranger) as gateway:
        network = gateway.get_network(fabric_profile.channel)
        with pytest.raises(EvaluateError) as evaluate:
            network.get_contract("fedaudit").evaluate("GetFederation", "x")
        with pytest.raises(ChaincodeEventsError) as events:
            next(network.chaincode_events("fedaudit", start_block=0))
    assert "access denied" in str(evaluate.value) and evaluate.value.chaincode_message is None
    assert events.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_wrong_tls_server_name_is_named_at_once_not_after_the_deadline(fabric_profile):
    with _coordinator_gateway(fabric_profile, server_name="not-this-peer.example.com") as gateway:
        started = time.monotonic()
        with pytest.raises(EvaluateError, match="TLS"):
            gateway.get_network(fabric_profile.channel).get_contract("fedaudit").evaluate(
                "GetFederation", "x"
            )
    assert time.monotonic() - started < 3
