"""The auditor's proof on Fabric blocks: each check passes on real blocks and fails on a
tampered copy. Blocks come from real Fabric 3.1.5 channels (etcdraft and BFT, captured
once under tests/fixtures/fabric_blocks/) or are built here with test keys — including
transactions a client got ordered with too few, forged or wrong endorsements, which a
lying peer then presents as VALID."""

from __future__ import annotations

import hashlib
import secrets

import pytest
from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import transaction_pb2

from ledger.errors import LedgerUnavailable
from ledger.fabric.blocks import (
    ChainInfo,
    block_data_hash,
    block_header_bytes,
    block_header_hash,
)
from ledger.fabric.channel_policy import signature_policy
from ledger.fabric.proof import (
    ChainVerifier,
    ChannelTrust,
    parse_pin,
    parse_signature_policy,
    prove_records,
    verify_block_signatures,
    verify_chain,
    verify_endorsements,
    verify_inclusion,
)
from tests.fixtures.fabric_blocks import (
    ChainBuilder,
    OrgCA,
    Signer,
    captured,
    captured_txs,
    endorsed_envelope,
    resign,
    sign,
)

MVCC_READ_CONFLICT = 11
ENDORSEMENT_POLICY_FAILURE = 10


def copies(blocks: list[common_pb2.Block]) -> list[common_pb2.Block]:
    return [common_pb2.Block.FromString(b.SerializeToString()) for b in blocks]


@pytest.fixture
def raft() -> list[common_pb2.Block]:
    return captured("etcdraft")


@pytest.fixture
def bft() -> list[common_pb2.Block]:
    return captured("bft")


def signatures(block: common_pb2.Block) -> common_pb2.Metadata:
    return common_pb2.Metadata.FromString(block.metadata.metadata[common_pb2.SIGNATURES])


def set_signatures(block: common_pb2.Block, metadata: common_pb2.Metadata) -> None:
    block.metadata.metadata[common_pb2.SIGNATURES] = metadata.SerializeToString()


def hx(data: bytes) -> str:
    return data.hex()


# --- real blocks -------------------------------------------------------------------------


def test_a_real_etcdraft_chain_verifies_from_its_genesis_block(raft):
    assert verify_chain(raft) == []


def test_a_real_bft_chain_verifies_with_a_quorum_of_consenter_signatures(bft):
    block = bft[3]
    named_by_id = [s for s in signatures(block).signatures if s.identifier_header and not s.signature_header]

    assert len(named_by_id) == 3  # SmartBFT names its consenters by id
    assert verify_chain(bft) == []


def test_channel_trust_reads_orderer_orgs_roots_and_policy_from_the_genesis_block(raft, bft):
    raft_trust = ChannelTrust.from_config_block(raft[0])
    bft_trust = ChannelTrust.from_config_block(bft[0])

    assert (raft_trust.channel, raft_trust.consensus, raft_trust.orderer_msps) == ("fedledger", "etcdraft", ("OrdererMSP",))
    assert raft_trust.policy == "ANY Writers of [OrdererMSP]"
    assert raft_trust.root_certs("OrdererMSP")[0].startswith(b"-----BEGIN CERTIFICATE-----")
    assert bft_trust.consensus == "BFT" and sorted(bft_trust.consenters) == [1, 2, 3, 4]
    assert bft_trust.policy.startswith("OutOf(3, 'CoordinatorOrdererMSP:orderer0.")
    assert len(bft_trust.orderer_msps) == 4


def test_a_changed_write_set_no_longer_matches_the_data_hash(raft):
    block = raft[4]
    original = block.header.data_hash
    assert b"cap-" in block.data.data[0]
    block.data.data[0] = block.data.data[0].replace(b"cap-", b"cbp-", 1)

    problems = verify_chain(raft)

    assert problems == [
        f"block 4: data hash {hx(original)} does not match its data (which hashes to {hx(block_data_hash(block))})"
    ]


def test_a_data_hash_rewritten_to_match_breaks_the_orderer_signature_and_the_next_link(raft):
    block = raft[4]
    block.data.data[0] = block.data.data[0].replace(b"cap-", b"cbp-", 1)
    block.header.data_hash = block_data_hash(block)

    problems = verify_chain(raft)

    assert len(problems) == 2
    assert problems[0].startswith("block 4: no valid orderer signature (signature 0: OrdererMSP 'orderer0.")
    assert problems[0].endswith("': the signature does not verify)")
    assert problems[1].startswith("block 5: previous hash ")
    assert "does not match block 4's header hash" in problems[1]


def test_a_changed_previous_hash_breaks_the_chain(raft):
    raft[3].header.previous_hash = bytes(32)

    problems = verify_chain(raft)

    assert problems[0] == (
        f"block 3: previous hash {'00' * 32} does not match block 2's header hash {hx(block_header_hash(raft[2].header))}"
    )
    assert problems[1].startswith("block 3: no valid orderer signature")
    assert problems[2].startswith("block 4: previous hash")


def test_a_missing_block_is_reported(raft):
    del raft[2]

    problems = verify_chain(raft)

    assert problems[0] == "block 2: the block in its place says it is block 3"
    assert problems[1].startswith("block 2: previous hash")


def test_a_block_whose_signatures_were_removed_is_unsigned(raft):
    metadata = signatures(raft[3])
    del metadata.signatures[:]
    set_signatures(raft[3], metadata)

    assert verify_chain(raft) == ["block 3: no orderer signature"]


def test_a_bft_block_with_one_signature_removed_falls_below_the_quorum(bft):
    metadata = signatures(bft[4])
    del metadata.signatures[2]
    set_signatures(bft[4], metadata)

    problems = verify_chain(bft)

    assert len(problems) == 1
    assert problems[0].startswith(
        "block 4: the valid orderer signatures (2) do not satisfy BlockValidation OutOf(3, 'CoordinatorOrdererMSP:"
    )


def test_a_bft_signature_copied_twice_counts_once(bft):
    metadata = signatures(bft[4])
    metadata.signatures[2].CopyFrom(metadata.signatures[0])
    set_signatures(bft[4], metadata)

    problems = verify_chain(bft)

    assert len(problems) == 1 and "do not satisfy BlockValidation OutOf(3," in problems[0]
    assert "(signature 2: a second signature by " in problems[0]


def test_a_bft_signature_naming_an_unknown_consenter_is_rejected(bft):
    metadata = signatures(bft[4])
    header = common_pb2.IdentifierHeader.FromString(metadata.signatures[0].identifier_header)
    header.identifier = 9
    metadata.signatures[0].identifier_header = header.SerializeToString()
    set_signatures(bft[4], metadata)

    problems = verify_chain(bft)

    assert len(problems) == 1
    assert "(signature 0: consenter 9 is not in the channel's consenter set)" in problems[0]


def test_a_bft_signature_claimed_for_another_consenter_does_not_verify(bft):
    metadata = signatures(bft[4])
    ids = [common_pb2.IdentifierHeader.FromString(s.identifier_header).identifier for s in metadata.signatures]
    (absent,) = {1, 2, 3, 4} - set(ids)
    header = common_pb2.IdentifierHeader.FromString(metadata.signatures[0].identifier_header)
    header.identifier = absent
    metadata.signatures[0].identifier_header = header.SerializeToString()
    set_signatures(bft[4], metadata)

    problems = verify_chain(bft)

    assert len(problems) == 1
    assert "the valid orderer signatures (2)" in problems[0]
    assert "signature 0: " in problems[0] and "the signature does not verify" in problems[0]


def test_validation_flags_are_checked_but_not_signed_by_the_orderers(raft):
    tx_id = next(t for t, n in captured_txs("etcdraft").items() if n == 4)
    assert verify_inclusion(raft[4], tx_id) == []
    raft[4].metadata.metadata[common_pb2.TRANSACTIONS_FILTER] = bytes([MVCC_READ_CONFLICT])

    # The chain still verifies: the committing peer writes the flags after ordering.
    assert verify_chain(raft) == []
    assert verify_inclusion(raft[4], tx_id) == [
        f"tx {tx_id}: in block 4 but TRANSACTIONS_FILTER says MVCC_READ_CONFLICT"
    ]


def test_a_transaction_is_looked_for_in_the_block_named(raft):
    tx_id = next(t for t, n in captured_txs("etcdraft").items() if n == 4)

    assert verify_inclusion(raft[5], tx_id) == [f"tx {tx_id}: not in block 5"]


def test_block_header_bytes_are_what_the_header_hash_hashes(raft):
    for block in raft:
        assert hashlib.sha256(block_header_bytes(block.header)).digest() == block_header_hash(block.header)


# --- blocks built with test keys -----------------------------------------------------------


@pytest.fixture(scope="module")
def orderer_ca() -> OrgCA:
    return OrgCA("OrdererMSP")


@pytest.fixture(scope="module")
def bank_ca() -> OrgCA:
    return OrgCA("BankAMSP")


@pytest.fixture(scope="module")
def orderer(orderer_ca):
    return orderer_ca.issue("orderer0.example.com")


@pytest.fixture
def chain(orderer_ca, bank_ca, orderer) -> ChainBuilder:
    """Genesis and two signed transaction blocks."""
    builder = ChainBuilder([orderer_ca], [bank_ca])
    for _ in range(2):
        sign(builder.add_transactions(), "OrdererMSP", orderer)
    return builder


def test_a_chain_built_as_fabric_builds_it_verifies(chain):
    assert verify_chain(chain.blocks) == []


def test_a_block_signed_by_a_client_of_the_orderer_org_is_rejected(chain, orderer_ca):
    sign(chain.add_transactions(), "OrdererMSP", orderer_ca.issue("admin-client", ou="client"))

    assert verify_chain(chain.blocks) == [
        ("block 3: no valid orderer signature (signature 0: OrdererMSP 'admin-client' is not an orderer "
        "(no orderer NodeOU))")
    ]


def test_a_block_signed_by_a_peer_organisation_is_rejected(chain, bank_ca):
    sign(chain.add_transactions(), "BankAMSP", bank_ca.issue("orderer0.banka", ou="orderer"))

    assert verify_chain(chain.blocks) == [
        "block 3: no valid orderer signature (signature 0: BankAMSP is not an orderer organisation of the channel)"
    ]


def test_a_block_signed_under_a_foreign_ca_copying_the_orderer_ca_name_is_rejected(chain, orderer_ca):
    impostor = OrgCA("OrdererMSP", name=orderer_ca.name.rfc4514_string().removeprefix("CN="))
    assert impostor.name == orderer_ca.name
    sign(chain.add_transactions(), "OrdererMSP", impostor.issue("orderer0.example.com"))

    assert verify_chain(chain.blocks) == [
        ("block 3: no valid orderer signature (signature 0: 'orderer0.example.com' is not certified by a CA of "
        "OrdererMSP)")
    ]


def test_a_signature_made_with_another_key_is_rejected(chain, orderer, orderer_ca):
    other = orderer_ca.issue("orderer1.example.com")
    sign(chain.add_transactions(), "OrdererMSP", orderer, key=other.key)

    assert verify_chain(chain.blocks) == [
        ("block 3: no valid orderer signature (signature 0: OrdererMSP 'orderer0.example.com': "
        "the signature does not verify)")
    ]


def test_a_high_s_signature_is_rejected_as_fabric_rejects_it(chain, orderer):
    sign(chain.add_transactions(), "OrdererMSP", orderer, high_s=True)

    assert verify_chain(chain.blocks) == [
        ("block 3: no valid orderer signature (signature 0: OrdererMSP 'orderer0.example.com': "
        "the signature is high-S (Fabric accepts only low-S))")
    ]


def test_one_valid_orderer_signature_satisfies_any_writers_beside_a_bad_one(chain, orderer, bank_ca):
    block = chain.add_transactions()
    sign(block, "BankAMSP", bank_ca.issue("x", ou="orderer"))
    sign(block, "OrdererMSP", orderer)

    assert verify_chain(chain.blocks) == []


def test_a_revoked_orderer_certificate_is_rejected(bank_ca):
    ca = OrgCA("OrdererMSP")
    revoked, good = ca.issue("orderer0.example.com"), ca.issue("orderer1.example.com")
    ca.revoked.append(revoked.cert)
    builder = ChainBuilder([ca], [bank_ca])
    sign(builder.add_transactions(), "OrdererMSP", good)
    sign(builder.add_transactions(), "OrdererMSP", revoked)

    assert verify_chain(builder.blocks) == [
        "block 2: no valid orderer signature (signature 0: 'orderer0.example.com' is revoked by its CA)"
    ]


def test_a_configuration_update_signed_by_the_old_orderers_admits_the_new_ones(chain, orderer_ca, orderer):
    new_ca = OrgCA("NewOrdererMSP")
    newcomer = new_ca.issue("orderer9.new.example.com")
    sign(chain.add_transactions(), "NewOrdererMSP", newcomer)  # not yet an orderer org
    sign(chain.add_config([orderer_ca, new_ca]), "OrdererMSP", orderer)
    sign(chain.add_transactions(), "NewOrdererMSP", newcomer)

    assert verify_chain(chain.blocks) == [
        "block 3: no valid orderer signature (signature 0: NewOrdererMSP is not an orderer organisation of the channel)"
    ]
    verifier = ChainVerifier()
    for block in chain.blocks:
        verifier.add(block)
    assert verifier.trust is not None and verifier.trust.config_block == 4
    assert verifier.trust.orderer_msps == ("NewOrdererMSP", "OrdererMSP")


def test_a_configuration_block_that_does_not_verify_is_not_adopted(chain, orderer_ca):
    rogue_ca = OrgCA("RogueMSP")
    rogue = rogue_ca.issue("orderer.rogue")
    sign(chain.add_config([orderer_ca, rogue_ca]), "RogueMSP", rogue)
    sign(chain.add_transactions(), "RogueMSP", rogue)

    problems = verify_chain(chain.blocks)

    assert problems == [
        "block 3: no valid orderer signature (signature 0: RogueMSP is not an orderer organisation of the channel)",
        "block 4: no valid orderer signature (signature 0: RogueMSP is not an orderer organisation of the channel)",
    ]


def test_transactions_re_split_under_the_same_data_hash_are_caught(orderer_ca, bank_ca, orderer):
    builder = ChainBuilder([orderer_ca], [bank_ca])
    block = builder.add_transactions("a" * 64, "b" * 64)
    sign(block, "OrdererMSP", orderer)
    first, second = block.data.data
    block.data.data[0], block.data.data[1] = first + second[:4], second[4:]
    assert block_data_hash(block) == block.header.data_hash

    problems = verify_chain(builder.blocks)

    assert problems and all(p.startswith("block 1: transaction ") for p in problems)


def test_a_genesis_block_that_is_not_a_configuration_block_is_refused(chain, orderer):
    builder = ChainBuilder([OrgCA("OrdererMSP")])
    builder.blocks[0] = chain.blocks[1]
    builder.blocks[0].header.number = 0

    problems = verify_chain(builder.blocks)

    assert "block 0: no usable channel configuration: block 0 is not a channel configuration block" in problems


def test_a_resigned_header_change_still_breaks_the_link_to_the_next_block(chain, orderer):
    """Even an orderer key cannot rewrite history: the next block names the old header."""
    chain.blocks[1].header.data_hash = bytes(32)
    resign(chain.blocks[1], "OrdererMSP", orderer)

    problems = verify_chain(chain.blocks)

    assert problems[0].startswith("block 1: data hash 00")
    assert problems[1].startswith("block 2: previous hash")
    assert len(problems) == 2


def test_block_signatures_are_checked_against_the_given_trust(chain, orderer_ca):
    other_channel = ChainBuilder([OrgCA("OrdererMSP")])
    trust = ChannelTrust.from_config_block(other_channel.blocks[0])

    problems = verify_block_signatures(chain.blocks[1], trust)

    assert problems == [
        ("block 1: no valid orderer signature (signature 0: 'orderer0.example.com' is not certified by a CA of "
        "OrdererMSP)")
    ]


# --- prove_records -------------------------------------------------------------------------


class FakeNetwork:
    """A peer serving a list of blocks through qscc (and, in tests, lying about them)."""

    def __init__(self, blocks: list[common_pb2.Block], *, head_hash: str | None = None,
                 fail_at: int | None = None) -> None:
        self.blocks = blocks
        self.head_hash = head_hash
        self.fail_at = fail_at

    def get_chain_info(self) -> ChainInfo:
        return ChainInfo(
            height=len(self.blocks),
            current_block_hash=self.head_hash or block_header_hash(self.blocks[-1].header).hex(),
            previous_block_hash=block_header_hash(self.blocks[-2].header).hex(),
        )

    def get_block_by_number(self, number: int) -> common_pb2.Block:
        if number == self.fail_at:
            raise LedgerUnavailable("the peer went away")
        return common_pb2.Block.FromString(self.blocks[number].SerializeToString())


def test_prove_records_finds_each_transaction_in_its_block_and_reports_the_head(raft):
    txs = captured_txs("etcdraft")

    report = prove_records(FakeNetwork(raft), list(txs))

    assert report.ok, report.problems
    assert dict(report.transactions) == txs
    assert report.blocks_checked == 6
    assert report.head == (5, block_header_hash(raft[5].header).hex())
    assert report.genesis_hash == block_header_hash(raft[0].header).hex()


def test_a_transaction_not_on_the_channel_is_reported(raft):
    report = prove_records(FakeNetwork(raft), ["f" * 64])

    assert report.problems == (f"tx {'f' * 64}: not in blocks 0..5",)


def test_a_transaction_flagged_invalid_by_the_peer_is_reported(raft):
    tx_id = next(t for t, n in captured_txs("etcdraft").items() if n == 3)
    raft[3].metadata.metadata[common_pb2.TRANSACTIONS_FILTER] = bytes([MVCC_READ_CONFLICT])

    report = prove_records(FakeNetwork(raft), [tx_id])

    assert report.problems == (f"tx {tx_id}: in block 3 but TRANSACTIONS_FILTER says MVCC_READ_CONFLICT",)


def test_pins_hold_for_the_same_chain_and_catch_a_rewrite(raft):
    head = block_header_hash(raft[5].header).hex()
    genesis = block_header_hash(raft[0].header).hex()
    assert prove_records(FakeNetwork(raft), [], pins=[f"5:{head.upper()}", f"0:{genesis}"]).ok

    report = prove_records(FakeNetwork(raft), [], pins=[f"3:{'ab' * 32}", f"9:{head}", "5-abc"])

    actual = block_header_hash(raft[3].header).hex()
    assert report.problems == (
        "pin '5-abc' is not BLOCK:HASH (a block number and a 64-digit hex header hash)",
        f"block 3 hashes to {actual}, pinned as {'ab' * 32}",
        "pinned block 9 is beyond the 6 blocks checked",
    )


def test_parse_pin_reads_block_and_lower_case_hash():
    assert parse_pin(f" 12:{'AB' * 32} ") == (12, "ab" * 32)
    with pytest.raises(ValueError, match="is not BLOCK:HASH"):
        parse_pin("12:abc")


def test_a_peer_claiming_another_head_hash_is_reported(raft):
    report = prove_records(FakeNetwork(raft, head_hash="cd" * 32), [])

    actual = block_header_hash(raft[5].header).hex()
    assert report.problems == (f"chain info: the peer says block 5 hashes to {'cd' * 32}, it hashes to {actual}",)


def test_a_block_that_cannot_be_read_ends_the_proof_with_a_problem(raft):
    tx_id = next(t for t, n in captured_txs("etcdraft").items() if n == 5)

    report = prove_records(FakeNetwork(raft, fail_at=4), [tx_id])

    assert not report.ok
    assert report.problems == ("block 4 cannot be read: the peer went away", f"tx {tx_id}: not in blocks 0..3")
    assert report.blocks_checked == 4


def test_a_lying_peer_serving_a_changed_block_fails_the_proof(bft):
    tx_id = next(t for t, n in captured_txs("bft").items() if n == 4)
    bft[4].data.data[0] = bft[4].data.data[0].replace(b"cap-", b"cbp-", 1)

    report = prove_records(FakeNetwork(copies(bft)), [tx_id])

    assert len(report.problems) == 1 and report.problems[0].startswith("block 4: data hash ")


# --- what a VALID flag claims: creator and endorsements ---------------------------------------

MAJORITY = "OutOf(2, 'CoordinatorMSP.peer', 'BankAMSP.peer', 'BankBMSP.peer')"


@pytest.fixture(scope="module")
def coordinator_ca() -> OrgCA:
    return OrgCA("CoordinatorMSP")


@pytest.fixture(scope="module")
def bankb_ca() -> OrgCA:
    return OrgCA("BankBMSP")


@pytest.fixture(scope="module")
def peers(coordinator_ca, bank_ca, bankb_ca) -> dict[str, Signer]:
    """One endorsing peer per peer organisation."""
    return {ca.msp_id: Signer(ca.msp_id, ca.issue(f"peer0.{ca.msp_id[:-3].lower()}", ou="peer"))
            for ca in (coordinator_ca, bank_ca, bankb_ca)}


@pytest.fixture(scope="module")
def client(coordinator_ca) -> Signer:
    return Signer("CoordinatorMSP", coordinator_ca.issue("User1@coordinator", ou="client"))


@pytest.fixture
def channel(orderer_ca, coordinator_ca, bank_ca, bankb_ca) -> ChainBuilder:
    """A channel of three peer organisations and an auditor organisation without peers."""
    return ChainBuilder([orderer_ca], [coordinator_ca, bank_ca, bankb_ca, OrgCA("AuditorMSP")],
                        endorsing=["CoordinatorMSP", "BankAMSP", "BankBMSP"])


def endorsed(channel: ChainBuilder, orderer, creator: Signer, endorsers: list[Signer], **options) -> str:
    """A transaction ordered into a block signed by the orderer (so only its content can be wrong)."""
    tx_id, block = channel.add_endorsed(creator, endorsers, **options)
    sign(block, "OrdererMSP", orderer)
    return tx_id


def prove(channel: ChainBuilder, tx_id: str, policy: str | None = MAJORITY):
    return prove_records(FakeNetwork(channel.blocks), [tx_id], endorsement_policy=policy)


def test_a_transaction_endorsed_by_a_majority_of_peer_orgs_is_proven(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], peers["BankBMSP"]])

    report = prove(channel, tx_id)

    assert report.ok, report.problems
    assert (report.endorsements_checked, report.endorsement_policy) == (1, MAJORITY)


def test_a_valid_flag_on_a_transaction_endorsed_by_one_org_is_reported(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"]])

    report = prove(channel, tx_id)

    assert report.problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its endorsements do not satisfy {MAJORITY}: "
        "only CoordinatorMSP 'peer0.coordinator' endorsed it",
    )


def test_a_forged_endorsement_signature_is_reported(channel, orderer, client, peers, bank_ca):
    forged = Signer("BankAMSP", peers["BankAMSP"].leaf, key=bank_ca.issue("someone", ou="peer").key)
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], forged])

    report = prove(channel, tx_id)

    assert report.problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its endorsements do not satisfy {MAJORITY}: "
        "only CoordinatorMSP 'peer0.coordinator' endorsed it "
        "(endorsement 1: BankAMSP 'peer0.banka': the signature does not verify)",
    )


def test_an_endorsement_by_a_client_rather_than_a_peer_is_reported(channel, orderer, client, peers, bank_ca):
    banka_client = Signer("BankAMSP", bank_ca.issue("User1@banka", ou="client"))
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], banka_client])

    (problem,) = prove(channel, tx_id).problems

    assert problem.endswith(
        "only CoordinatorMSP 'peer0.coordinator' endorsed it "
        "(endorsement 1: BankAMSP 'User1@banka' is not a peer (no peer NodeOU))"
    )


def test_an_endorsement_by_an_orderer_organisation_is_reported(channel, orderer, client, peers, orderer_ca):
    outsider = Signer("OrdererMSP", orderer_ca.issue("peer0.orderer", ou="peer"))
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], outsider])

    (problem,) = prove(channel, tx_id).problems

    assert problem.endswith("(endorsement 1: OrdererMSP is not an application organisation of the channel)")


def test_the_same_peer_endorsing_twice_counts_once(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], peers["CoordinatorMSP"]])

    (problem,) = prove(channel, tx_id).problems

    assert problem.endswith("(endorsement 1: a second endorsement by CoordinatorMSP 'peer0.coordinator')")


def test_a_transaction_without_endorsements_is_reported(channel, orderer, client):
    tx_id = endorsed(channel, orderer, client, [])

    assert prove(channel, tx_id).problems == (
        f"tx {tx_id}: in block 1 flagged VALID but it carries no endorsement, and {MAJORITY} needs some",
    )


def test_a_tampered_creator_signature_is_reported(channel, orderer, client, peers, coordinator_ca):
    tampered = Signer("CoordinatorMSP", client.leaf, key=coordinator_ca.issue("User2", ou="client").key)
    tx_id = endorsed(channel, orderer, tampered, [peers["CoordinatorMSP"], peers["BankAMSP"]])

    assert prove(channel, tx_id).problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its creator's signature (CoordinatorMSP 'User1@coordinator'): "
        "the signature does not verify",
    )


def test_a_transaction_created_by_an_orderer_organisation_is_reported(channel, orderer, peers, orderer_ca):
    creator = Signer("OrdererMSP", orderer_ca.issue("Admin@orderer", ou="admin"))
    tx_id = endorsed(channel, orderer, creator, [peers["CoordinatorMSP"], peers["BankAMSP"]])

    assert prove(channel, tx_id).problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its creator: OrdererMSP is not an application organisation "
        "of the channel",
    )


def test_a_transaction_of_another_chaincode_is_reported(channel, orderer, client, peers):
    majority = [peers["CoordinatorMSP"], peers["BankAMSP"]]
    other = endorsed(channel, orderer, client, majority, chaincode="other")
    swapped = endorsed(channel, orderer, client, majority, chaincode="other", invoked="fedaudit")

    assert prove(channel, other).problems == (
        f"tx {other}: in block 1 flagged VALID but it invokes chaincode 'other', not 'fedaudit'",
        f"tx {other}: in block 1 flagged VALID but its endorsed action is for chaincode 'other', not 'fedaudit'",
        f"tx {other}: in block 1 flagged VALID but it writes to namespace 'other', whose endorsement policy "
        "is not the one checked",
    )
    assert f"tx {swapped}: in block 2 flagged VALID but its endorsed action is for chaincode 'other'" in (
        prove(channel, swapped).problems[0]
    )


def test_endorsements_taken_from_another_transaction_do_not_match_its_proposal(channel, orderer, client, peers):
    """A client cannot reuse a majority's endorsements of one proposal for a transaction of its own."""
    _, original = endorsed_envelope(channel.channel, client, [peers["CoordinatorMSP"], peers["BankAMSP"]])
    tx_id, reused = rewrap(original, client)
    sign(channel.add_block([reused]), "OrdererMSP", orderer)

    assert prove(channel, tx_id).problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its endorsed proposal hash does not match its header and proposal",
    )


def rewrap(raw: bytes, creator: Signer) -> tuple[str, bytes]:
    """The transaction's endorsed action under a fresh header (nonce, tx id) signed by ``creator``."""
    payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
    nonce = secrets.token_bytes(24)
    tx_id = hashlib.sha256(nonce + creator.serialized).hexdigest()
    header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    header.tx_id = tx_id
    payload.header.channel_header = header.SerializeToString()
    signature_header = common_pb2.SignatureHeader(creator=creator.serialized, nonce=nonce)
    payload.header.signature_header = signature_header.SerializeToString()
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    transaction.actions[0].header = payload.header.signature_header
    payload.data = transaction.SerializeToString()
    signed = payload.SerializeToString()
    return tx_id, common_pb2.Envelope(payload=signed, signature=creator.sign(signed)).SerializeToString()


def test_without_a_stated_policy_the_channel_endorsement_policy_is_checked(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["BankBMSP"]])

    report = prove(channel, tx_id, policy=None)

    assert report.endorsement_policy == MAJORITY
    assert report.problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its endorsements do not satisfy {MAJORITY}: "
        "only BankBMSP 'peer0.bankb' endorsed it",
    )


def test_a_stated_policy_stricter_than_the_channel_is_the_one_enforced(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], peers["BankAMSP"]])
    assert prove(channel, tx_id).ok

    report = prove(channel, tx_id, policy="AND('CoordinatorMSP.peer', 'BankAMSP.peer', 'BankBMSP.peer')")

    assert report.problems == (
        f"tx {tx_id}: in block 1 flagged VALID but its endorsements do not satisfy "
        "OutOf(3, 'CoordinatorMSP.peer', 'BankAMSP.peer', 'BankBMSP.peer'): "
        "only CoordinatorMSP 'peer0.coordinator', BankAMSP 'peer0.banka' endorsed it",
    )


def test_an_endorsement_policy_that_does_not_parse_fails_the_proof_closed(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"], peers["BankAMSP"]])

    report = prove(channel, tx_id, policy="OutOf(2, 'CoordinatorMSP.peer'")

    assert report.problems == (
        "the endorsement policy cannot be checked: policy \"OutOf(2, 'CoordinatorMSP.peer'\" does not parse: "
        "the policy ends where ')' was expected",
    )
    assert report.endorsements_checked == 0


def test_a_transaction_flagged_invalid_is_not_checked_further(channel, orderer, client, peers):
    tx_id = endorsed(channel, orderer, client, [peers["CoordinatorMSP"]])
    channel.blocks[1].metadata.metadata[common_pb2.TRANSACTIONS_FILTER] = bytes([ENDORSEMENT_POLICY_FAILURE])

    report = prove(channel, tx_id)

    assert report.problems == (f"tx {tx_id}: in block 1 but TRANSACTIONS_FILTER says ENDORSEMENT_POLICY_FAILURE",)
    assert report.endorsements_checked == 0


def test_real_transactions_carry_endorsements_that_satisfy_the_majority_policy(raft, bft):
    for consensus, blocks in (("etcdraft", raft), ("bft", bft)):
        report = prove_records(FakeNetwork(blocks), list(captured_txs(consensus)), endorsement_policy=MAJORITY)

        assert report.ok, report.problems
        assert report.endorsements_checked == 3


def test_the_channel_endorsement_policy_and_application_orgs_are_read_from_the_genesis_block(raft):
    trust = ChannelTrust.from_config_block(raft[0])

    assert trust.endorsement_policy == MAJORITY
    assert trust.application_msps == ("AuditorMSP", "BankAMSP", "BankBMSP", "BankCMSP", "CoordinatorMSP")


def test_a_real_transaction_stripped_of_an_endorsement_breaks_its_creator_signature_and_the_policy(raft):
    tx_id = next(t for t, n in captured_txs("etcdraft").items() if n == 3)
    trust = ChannelTrust.from_config_block(raft[0])
    assert verify_endorsements(raft[3], tx_id, trust, endorsement_policy=MAJORITY) == []
    drop_endorsement(raft[3], "BankAMSP")

    assert verify_endorsements(raft[3], tx_id, trust, endorsement_policy=MAJORITY) == [
        f"tx {tx_id}: in block 3 flagged VALID but its creator's signature "
        "(CoordinatorMSP 'User1@coordinator.fedledger.local'): the signature does not verify",
        f"tx {tx_id}: in block 3 flagged VALID but its endorsements do not satisfy {MAJORITY}: "
        "only CoordinatorMSP 'peer0.coordinator.fedledger.local' endorsed it",
    ]


def test_a_real_transaction_is_not_accepted_for_another_chaincode(raft):
    tx_id = next(t for t, n in captured_txs("etcdraft").items() if n == 4)
    trust = ChannelTrust.from_config_block(raft[0])

    problems = verify_endorsements(raft[4], tx_id, trust, endorsement_policy=MAJORITY, chaincode="fedaudit-v2")

    assert problems[:2] == [
        f"tx {tx_id}: in block 4 flagged VALID but it invokes chaincode 'fedaudit', not 'fedaudit-v2'",
        f"tx {tx_id}: in block 4 flagged VALID but its endorsed action is for chaincode 'fedaudit', not 'fedaudit-v2'",
    ]


def drop_endorsement(block: common_pb2.Block, msp_id: str) -> None:
    """Remove ``msp_id``'s endorsement from the block's first transaction."""
    envelope = common_pb2.Envelope.FromString(block.data.data[0])
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    action = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload)
    kept = [e for e in action.action.endorsements
            if identities_pb2.SerializedIdentity.FromString(e.endorser).mspid != msp_id]
    del action.action.endorsements[:]
    action.action.endorsements.extend(kept)
    transaction.actions[0].payload = action.SerializeToString()
    payload.data = transaction.SerializeToString()
    envelope.payload = payload.SerializeToString()
    block.data.data[0] = envelope.SerializeToString()


# --- Fabric's signature-policy language --------------------------------------------------------


def describe(text: str) -> str:
    return signature_policy(parse_signature_policy(text), {}).describe()


def test_signature_policies_parse_as_fabric_compiles_them():
    assert describe(MAJORITY) == MAJORITY
    assert describe("AND('A.peer', OR('B.admin', \"C.client\"))") == (
        "OutOf(2, 'A.peer', OutOf(1, 'B.admin', 'C.client'))"
    )
    assert describe("outof(1, 'Org-1.example.member', and('B.orderer'))") == (
        "OutOf(1, 'Org-1.example.member', OutOf(1, 'B.orderer'))"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("XOR('A.peer')", "'XOR' is not a gate (AND, OR, OutOf)"),
        ("aNd('A.peer')", "'aNd' is not a gate (AND, OR, OutOf)"),
        ("OR('A.boss')", "principal 'A.boss' is not 'MSP.role'"),
        ("OutOf(4, 'A.peer', 'B.peer')", "OutOf(4, …) over 2 principals or rules"),
        ("OR('A.peer') OR('B.peer')", "'OR' after the end of the policy"),
        ("OR('A.peer'; 'B.peer')", "unexpected \"; 'B.peer')\""),
    ],
)
def test_malformed_signature_policies_are_refused(text, why):
    with pytest.raises(ValueError, match="does not parse") as refused:
        parse_signature_policy(text)

    assert why in str(refused.value)
