"""Content-addressed store for model updates and global models (DESIGN §4.6).

Each named set of tensors is stored under its :func:`~ledger.formats.update_digest`, so an
auditor can fetch exactly the tensors a ledger record names and recompute the aggregate.
Reads re-hash what they load: a file that no longer matches its name is reported, never
returned.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ledger.formats import update_digest

__all__ = ["ArtifactStore", "ArtifactError", "ArtifactMissing", "ArtifactCorrupted"]


class ArtifactError(Exception):
    """Base class of artifact-store failures."""


class ArtifactMissing(ArtifactError):
    """No artifact is stored under the digest asked for."""


class ArtifactCorrupted(ArtifactError):
    """A stored artifact does not hash to its name (edited or damaged)."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Tensors stored as ``<root>/<digest>.npz`` (uncompressed, no pickles)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._written: set[str] = set()  # written (and fsynced) by this store: known good

    def path(self, digest: str) -> Path:
        """Where the artifact named ``digest`` lives."""
        return self.root / f"{digest}.npz"

    def put_many(self, batch: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
        """Store several artifacts at once: their fsyncs overlap (they release the GIL) and
        the directory is synced once for all of them."""
        if not batch:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(batch))) as pool:
            results = list(pool.map(self._write, batch))
        if any(wrote for _, wrote in results):
            _fsync_dir(self.root)
        return [digest for digest, _ in results]

    def put(self, arrays: Mapping[str, np.ndarray]) -> str:
        """Store ``arrays`` (idempotent) and return their digest."""
        digest, wrote = self._write(arrays)
        if wrote:
            _fsync_dir(self.root)
        return digest

    def _write(self, arrays: Mapping[str, np.ndarray]) -> tuple[str, bool]:
        """Write the artifact unless a good copy exists; (digest, whether it wrote)."""
        digest = update_digest(arrays)
        target = self.path(digest)
        if digest in self._written:
            return digest, False
        if target.exists():
            try:
                self.get(digest)
                self._written.add(digest)
                return digest, False
            except ArtifactCorrupted:
                pass  # a damaged copy: write a good one over it
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                # Names go into a sidecar order list: npz member names cannot hold every
                # UTF-8 tensor name, so members are numbered and the names stored beside.
                names = sorted(arrays)
                payload = {f"t{i}": np.asarray(arrays[n]) for i, n in enumerate(names)}
                payload["__names__"] = np.array(names, dtype=np.str_)
                np.savez(fh, allow_pickle=False, **payload)
                # The ledger commits durably; what it names must survive a power loss too.
                fh.flush()
                os.fdatasync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._written.add(digest)
        return digest, True

    def get(self, digest: str) -> dict[str, np.ndarray]:
        """Load the artifact named ``digest`` and check that it still hashes to it."""
        path = self.path(digest)
        if not path.exists():
            raise ArtifactMissing(f"artifact {digest} is not in {self.root}")
        try:
            with np.load(path, allow_pickle=False) as data:
                names = [str(n) for n in data["__names__"]]
                arrays = {name: data[f"t{i}"] for i, name in enumerate(names)}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ArtifactCorrupted(f"artifact {path} cannot be read: {exc}") from exc
        actual = update_digest(arrays)
        if actual != digest:
            raise ArtifactCorrupted(f"artifact {path} hashes to {actual}, not to its name")
        return arrays

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self.path(digest).exists()
