"""The institution's signer: the only process that can sign in the institution's name.

A SuperNode runs the ClientApp the coordinator ships. Instead of giving that code the
institution's key, the node asks this signer — over a Unix socket in a 0700 directory —
to sign a manifest, and the signer signs only what the institution's policy allows
(:mod:`fl.signer.policy`: its federation, the ledger's current round and committed
model, one manifest per round, at most the examples it declared). Every decision goes
to a hash-chained journal (:mod:`fl.signer.journal`) that the institution can compare
with the ledger (:mod:`fl.signer.reconcile`). The key is a 0600 file or a key in a
PKCS#11 token (:mod:`ledger.keys_pkcs11`); the SuperNode authenticates through the
signer too (:mod:`fl.signer.supernode`), so no process of the node holds the key.

What separates the signer from the ClientApp is the operating system: the socket's
permissions admit the signer's own user (and uids listed with ``--allow-uid``); a
ClientApp running as *that same user* could still read a key file that user can read.
Keep the key where the node's user cannot reach it: in a token whose PIN only the
signer holds, or in a file owned by a separate signer user (``--allow-uid`` the node's
uid then).

Modules: ``client`` (what the node imports: stdlib + cryptography only), ``policy``,
``journal``, ``service``, ``server``, ``keys``, ``ledger_view``, ``settings``,
``runner``, ``reconcile``, ``supernode``.
"""

from fl.signer.client import SignerClient, SignerError, SignerRefused, SignerUnavailable

__all__ = ["SignerClient", "SignerError", "SignerRefused", "SignerUnavailable"]
