"""Hyperledger Fabric: install from a release archive, the local network driver, the
connection profile, and the Gateway client the ``fabric`` ledger backend is built on."""
