"""Session fixtures of the integration tests (a real Fabric network, brought up once)."""

from tests.fixtures.fabric import fabric_install, fabric_network, fabric_profile  # noqa: F401
