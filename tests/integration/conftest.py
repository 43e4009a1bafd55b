"""Session fixtures of the integration tests (a real Fabric network, brought up once)."""

from tests.fixtures.fabric import fabric_install, fabric_network, fabric_profile  # noqa: F401
from tests.fixtures.kube import kube_admin, kube_cluster  # noqa: F401,E402
