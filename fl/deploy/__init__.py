"""Deployment mode: real Flower processes with TLS and SuperNode authentication.

* :class:`fl.config.DeploymentConfig` — the ``[deployment]`` table of the federation file.
* :mod:`fl.deploy.services` — detach, stop and read the state of a service.
* :mod:`fl.deploy.signer` — an institution's signer as the federation file describes it.
* :mod:`ledger.processes` (shared with the Fabric network driver) — detached processes, pid files, clean stop by pid.
* :mod:`fl.deploy.flower` — the one seam to Flower's executables and Control API.
* :mod:`fl.deploy.nodes` — which node keys the SuperLink must accept, from the ledger.
* :mod:`fl.deploy.coordinator` / :mod:`fl.deploy.client` — the two services.
* :mod:`fl.deploy.binding` — the ServerApp's map from an authenticated node to a participant.
"""
