"""Signature verifications per second at the coordinator (goal ≥ 10,000/s).

Verifies distinct signed manifests against cached P-256 public keys, as the coordinator
does (one key per participant, parsed once), on 1 thread and on all cores (OpenSSL
releases the GIL).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.asymmetric import ec

from ledger.formats import Manifest, sign, update_digest, verify

__all__ = ["measure"]


def _workload(n: int, participants: int = 100) -> list[tuple[bytes, str, ec.EllipticCurvePublicKey]]:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(participants)]
    base = update_digest({})
    out = []
    for i in range(n):
        key = keys[i % participants]
        manifest = Manifest(federation="bench", participant=f"bank-{i % participants}", round=1 + i // participants,
                            base_model=base, update=f"{i:064x}", num_examples=1000 + i)
        data = manifest.to_bytes()
        out.append((data, sign(data, key), key.public_key()))
    return out


def measure(n: int = 20_000) -> dict[str, float]:
    """Return verifications per second, single-threaded and on every core."""
    work = _workload(n)
    started = time.perf_counter()
    for data, sig, key in work:
        verify(data, sig, key)
    single = n / (time.perf_counter() - started)
    threads = os.cpu_count() or 1
    chunks = [work[i::threads] for i in range(threads)]

    def run(chunk: list[tuple[bytes, str, ec.EllipticCurvePublicKey]]) -> None:
        for data, sig, key in chunk:
            verify(data, sig, key)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, chunks))
    parallel = n / (time.perf_counter() - started)
    return {"verifications": n, "per_second_1_thread": single, "threads": threads,
            "per_second_all_cores": parallel}
