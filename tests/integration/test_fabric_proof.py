"""The auditor's proof against real Fabric networks: records written by the coordinator are
proven from an AuditorMSP gateway (no peer of its own) — their creators and endorsements
checked against the chaincode's committed endorsement policy — and a peer that lies about
a block is caught, or, for an MVCC conflict it flags VALID, honestly not caught.
``fabric_network`` / ``fabric_profile`` are the session's etcdraft network."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from fabric_protos.common import common_pb2
from fabric_protos.ledger.rwset import rwset_pb2
from fabric_protos.ledger.rwset.kvrwset import kv_rwset_pb2
from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2

from ledger.fabric.blocks import ChainInfo
from ledger.fabric.gateway import (
    CommitError,
    EndorseError,
    Network,
    SubmitResult,
    connect_from_profile,
)
from ledger.fabric.install import FabricInstall
from ledger.fabric.network import Network as FabricNetwork
from ledger.fabric.profile import ConnectionProfile
from ledger.fabric.proof import prove_records
from tests.fixtures.fabric import start_network, stop_network

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

POLICY = json.dumps({"auditor_msps": ["AuditorMSP"]})


def submit_federations(profile: ConnectionProfile, count: int) -> list[SubmitResult]:
    """``count`` InitFederation transactions by the coordinator, each waited for."""
    with connect_from_profile(profile, "CoordinatorMSP") as gateway:
        contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
        return [
            contract.submit("InitFederation", "proof-" + secrets.token_hex(5), POLICY, commit_timeout=90)
            for _ in range(count)
        ]


@pytest.fixture(scope="module")
def records(fabric_profile: ConnectionProfile) -> list[SubmitResult]:
    return submit_federations(fabric_profile, 3)


@pytest.fixture(scope="module")
def endorsement_policy(fabric_network: FabricNetwork) -> str:
    """The policy the chaincode was committed with: what the consortium agreed to."""
    return fabric_network.definition().policy


def under_endorsed(profile: ConnectionProfile) -> CommitError:
    """A transaction the coordinator had endorsed by its own peer only: ordered (orderers
    do not check endorsements), then committed ENDORSEMENT_POLICY_FAILURE."""
    with connect_from_profile(profile, "CoordinatorMSP") as gateway:
        contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
        with pytest.raises(CommitError) as refused:
            contract.submit("InitFederation", "proof-" + secrets.token_hex(5), POLICY,
                            endorsing_orgs=["CoordinatorMSP"], commit_timeout=90)
    assert refused.value.validation_code == "ENDORSEMENT_POLICY_FAILURE"
    return refused.value


def mvcc_conflict(profile: ConnectionProfile) -> CommitError:
    """The loser of two writes of one key ordered together: committed MVCC_READ_CONFLICT."""
    with connect_from_profile(profile, "CoordinatorMSP") as gateway:
        contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
        for _ in range(5):
            # Endorsed before the first commits (blocks are cut every 100 ms), both read
            # "no such federation"; the peers then refuse the second.
            fed = "proof-" + secrets.token_hex(5)
            first = contract.submit_async("InitFederation", fed, POLICY)
            try:
                second = contract.submit_async("InitFederation", fed, POLICY)
            except EndorseError:
                first.wait(90)
                continue  # the first had already committed: try again with a new id
            first.wait(90)
            with pytest.raises(CommitError) as conflict:
                second.wait(90)
            assert conflict.value.validation_code == "MVCC_READ_CONFLICT"
            return conflict.value
    pytest.fail("could not get two endorsements in before the first commit in 5 tries")


class LyingNetwork:
    """A peer that serves every block faithfully except one, which it changes first."""

    def __init__(self, network: Network, number: int, change: Callable[[common_pb2.Block], None]) -> None:
        self.network = network
        self.number = number
        self.change = change

    def get_chain_info(self) -> ChainInfo:
        return self.network.get_chain_info()

    def get_block_by_number(self, number: int) -> common_pb2.Block:
        block = self.network.get_block_by_number(number)
        if number == self.number:
            self.change(block)
        return block


def change_first_write(block: common_pb2.Block) -> None:
    """Rewrite the value of the first key the block's first transaction wrote."""
    envelope = common_pb2.Envelope.FromString(block.data.data[0])
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    action_payload = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload)
    response = proposal_response_pb2.ProposalResponsePayload.FromString(
        action_payload.action.proposal_response_payload
    )
    action = proposal_pb2.ChaincodeAction.FromString(response.extension)
    rwset = rwset_pb2.TxReadWriteSet.FromString(action.results)
    namespace = next(ns for ns in rwset.ns_rwset if ns.namespace == "fedaudit")
    kv = kv_rwset_pb2.KVRWSet.FromString(namespace.rwset)
    assert kv.writes, "the transaction wrote nothing"
    kv.writes[0].value = kv.writes[0].value.replace(b"AuditorMSP", b"BankAMSP") + b" "
    namespace.rwset = kv.SerializeToString()
    action.results = rwset.SerializeToString()
    response.extension = action.SerializeToString()
    action_payload.action.proposal_response_payload = response.SerializeToString()
    transaction.actions[0].payload = action_payload.SerializeToString()
    payload.data = transaction.SerializeToString()
    envelope.payload = payload.SerializeToString()
    block.data.data[0] = envelope.SerializeToString()


def flag_first_transaction(block: common_pb2.Block) -> None:
    """Mark the block's first transaction as an MVCC read conflict."""
    flags = bytearray(block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER])
    flags[0] = transaction_pb2.MVCC_READ_CONFLICT
    block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER] = bytes(flags)


def flag_valid(tx_id: str) -> Callable[[common_pb2.Block], None]:
    """A change that marks transaction ``tx_id`` VALID in its block, as a lying peer would."""

    def change(block: common_pb2.Block) -> None:
        flags = bytearray(block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER])
        for i, raw in enumerate(block.data.data):
            payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
            if common_pb2.ChannelHeader.FromString(payload.header.channel_header).tx_id == tx_id:
                flags[i] = transaction_pb2.VALID
        block.metadata.metadata[common_pb2.TRANSACTIONS_FILTER] = bytes(flags)

    return change


def test_coordinator_records_are_proven_from_an_auditor_gateway(fabric_profile, records, endorsement_policy):
    with connect_from_profile(fabric_profile, "AuditorMSP") as gateway:
        network = gateway.get_network(fabric_profile.channel)
        report = prove_records(network, [r.tx_id for r in records], endorsement_policy=endorsement_policy)
        assert report.ok, report.problems
        assert dict(report.transactions) == {r.tx_id: r.block_number for r in records}
        assert report.endorsements_checked == 3
        assert report.endorsement_policy == endorsement_policy
        assert report.head is not None and report.head[0] >= max(r.block_number for r in records)
        assert report.blocks_checked == report.head[0] + 1

        # An audit later pins what this one saw.
        head_number, head_hash = report.head
        again = prove_records(network, [records[0].tx_id], pins=[f"{head_number}:{head_hash}"])
        assert again.ok, again.problems
        assert again.genesis_hash == report.genesis_hash


def test_a_peer_that_changes_a_written_value_is_caught(fabric_profile, records):
    target = records[1]
    with connect_from_profile(fabric_profile, "AuditorMSP") as gateway:
        liar = LyingNetwork(gateway.get_network(fabric_profile.channel), target.block_number, change_first_write)
        report = prove_records(liar, [r.tx_id for r in records])

    assert not report.ok
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"block {target.block_number}: data hash ")
    assert "does not match its data" in report.problems[0]


def test_a_peer_that_flags_a_transaction_invalid_is_reported(fabric_profile, records):
    target = records[2]
    with connect_from_profile(fabric_profile, "AuditorMSP") as gateway:
        liar = LyingNetwork(gateway.get_network(fabric_profile.channel), target.block_number, flag_first_transaction)
        report = prove_records(liar, [r.tx_id for r in records])

    assert report.problems == (
        f"tx {target.tx_id}: in block {target.block_number} but TRANSACTIONS_FILTER says MVCC_READ_CONFLICT",
    )


def test_a_peer_that_flags_an_under_endorsed_transaction_valid_is_caught(fabric_profile, endorsement_policy):
    """Endorsed by the coordinator alone (the client chose so), ordered, and refused by the
    honest peers; a lying peer's VALID flag does not survive the endorsement check."""
    refused = under_endorsed(fabric_profile)
    with connect_from_profile(fabric_profile, "AuditorMSP") as gateway:
        channel = gateway.get_network(fabric_profile.channel)
        honest = prove_records(channel, [refused.tx_id], endorsement_policy=endorsement_policy)
        liar = LyingNetwork(channel, refused.block_number, flag_valid(refused.tx_id))
        lie = prove_records(liar, [refused.tx_id], endorsement_policy=endorsement_policy)

    assert honest.problems == (
        f"tx {refused.tx_id}: in block {refused.block_number} but TRANSACTIONS_FILTER says ENDORSEMENT_POLICY_FAILURE",
    )
    assert lie.problems == (
        f"tx {refused.tx_id}: in block {refused.block_number} flagged VALID but its endorsements do not satisfy "
        f"{endorsement_policy}: only CoordinatorMSP 'peer0.coordinator.fedledger.local' endorsed it",
    )


def test_a_peer_that_flags_an_mvcc_conflict_valid_is_not_caught_by_the_blocks_alone(
    fabric_profile, endorsement_policy
):
    """The known limit: the loser of a write race was properly endorsed and signed, and
    only its stale read made it invalid. Nothing in the blocks' signatures says so; a
    replay of the earlier writes (or a second peer) would."""
    conflict = mvcc_conflict(fabric_profile)
    with connect_from_profile(fabric_profile, "AuditorMSP") as gateway:
        channel = gateway.get_network(fabric_profile.channel)
        honest = prove_records(channel, [conflict.tx_id], endorsement_policy=endorsement_policy)
        liar = LyingNetwork(channel, conflict.block_number, flag_valid(conflict.tx_id))
        lie = prove_records(liar, [conflict.tx_id], endorsement_policy=endorsement_policy)

    assert honest.problems == (
        f"tx {conflict.tx_id}: in block {conflict.block_number} but TRANSACTIONS_FILTER says MVCC_READ_CONFLICT",
    )
    assert lie.ok and lie.endorsements_checked == 1, lie.problems


def test_records_on_a_bft_channel_are_proven_with_a_quorum_of_consenter_signatures(
    fabric_install: FabricInstall, tmp_path: Path
):
    network = start_network(fabric_install, tmp_path / "bft", consensus="bft")
    try:
        profile = network.profile()
        submitted = submit_federations(profile, 2)
        with connect_from_profile(profile, "AuditorMSP") as gateway:
            channel = gateway.get_network(profile.channel)
            report = prove_records(channel, [r.tx_id for r in submitted],
                                   endorsement_policy=network.definition().policy)
            signed = common_pb2.Metadata.FromString(
                channel.get_block_by_number(submitted[0].block_number).metadata.metadata[common_pb2.SIGNATURES]
            )
            liar = LyingNetwork(channel, submitted[1].block_number, change_first_write)
            lie = prove_records(liar, [r.tx_id for r in submitted])
    finally:
        survivors = stop_network(network)
        assert not survivors, f"processes survived network down: {survivors}"

    assert report.ok, report.problems
    assert dict(report.transactions) == {r.tx_id: r.block_number for r in submitted}
    assert report.endorsements_checked == 2
    assert len(signed.signatures) >= 3 and all(s.identifier_header for s in signed.signatures)
    assert len(lie.problems) == 1 and lie.problems[0].startswith(f"block {submitted[1].block_number}: data hash ")
