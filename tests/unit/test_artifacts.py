"""The content-addressed artifact store: what it returns always hashes to its name."""

from __future__ import annotations

import numpy as np
import pytest

from ledger.artifacts import ArtifactCorrupted, ArtifactMissing, ArtifactStore
from ledger.formats import update_digest


def tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(4, 3)).astype(np.float32), "é/b": rng.normal(size=3).astype(np.float32)}


def test_put_and_get_round_trip_names_dtypes_and_values(tmp_path):
    store = ArtifactStore(tmp_path)
    digest = store.put(tensors(1))
    assert digest == update_digest(tensors(1)) and digest in store
    back = store.get(digest)
    assert sorted(back) == sorted(tensors(1))
    for name, value in tensors(1).items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype


def test_put_many_stores_each_once_and_returns_digests_in_order(tmp_path):
    store = ArtifactStore(tmp_path)
    batch = [tensors(1), tensors(2), tensors(1)]
    assert store.put_many(batch) == [update_digest(t) for t in batch]
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert list(tmp_path.glob("*.tmp")) == []


def test_a_damaged_or_swapped_file_is_reported_and_repaired_by_the_next_put(tmp_path):
    digest = ArtifactStore(tmp_path).put(tensors(1))
    other = ArtifactStore(tmp_path).put(tensors(2))
    ArtifactStore(tmp_path).path(digest).write_bytes(ArtifactStore(tmp_path).path(other).read_bytes())
    with pytest.raises(ArtifactCorrupted, match="hashes to"):
        ArtifactStore(tmp_path).get(digest)
    ArtifactStore(tmp_path).path(digest).write_bytes(b"garbage")
    with pytest.raises(ArtifactCorrupted, match="cannot be read"):
        ArtifactStore(tmp_path).get(digest)
    fresh = ArtifactStore(tmp_path)  # a new process: nothing is known good yet
    assert fresh.put(tensors(1)) == digest
    np.testing.assert_array_equal(fresh.get(digest)["w"], tensors(1)["w"])


def test_a_missing_artifact_is_named(tmp_path):
    with pytest.raises(ArtifactMissing, match="0" * 64):
        ArtifactStore(tmp_path).get("0" * 64)
