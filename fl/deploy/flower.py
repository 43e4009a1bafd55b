"""The one seam to Flower 1.42's executables and Control API (measured facts inline).

* ``flower-superlink``: Fleet, Control and Runtime APIs on ONE HTTPS port (``--host``,
  ``--port``); TLS with ``--ssl-ca-certfile --ssl-certfile --ssl-keyfile``; node auth with
  ``--enable-supernode-auth``; state (including registered node keys) in ``--database``.
  It starts ``flower-superexec`` from ``PATH``, so the venv's ``bin`` must be on it.
* ``flower-supernode``: ``--root-certificates`` (the SuperLink's TLS CA),
  ``--auth-supernode-private-key`` (OpenSSH format only: it calls
  ``load_ssh_private_key``), ``--node-config`` (a ``.toml`` file path is accepted), and a
  ``--port`` of its own for the Runtime API its ClientApp process talks to.
* Node keys are registered through the Control API (``RegisterNode``: SubjectPublicKeyInfo
  PEM + a name); the SuperLink keeps them, with a UNIQUE constraint on the key that also
  covers *unregistered* nodes, so an unregistered key can never be registered again on
  that SuperLink database.
* An unregistered node's next authenticated Fleet call gets HTTP 401 and the SuperNode
  stops itself (SIGINT, "SuperNode terminated gracefully"); a SuperNode started with an
  unknown key logs ``Exit Code: 305`` and exits with process status 1.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl.runtime import flower_env

__all__ = [
    "CONNECTION",
    "ControlError",
    "NodeView",
    "RunView",
    "SuperLinkControl",
    "flower_executable",
    "service_env",
    "write_flwr_config",
    "write_toml_config",
    "app_config_keys",
    "superlink_command",
    "supernode_command",
    "run_command",
    "supernode_node_id",
    "refused_exit_code",
]

CONNECTION = "fedledger"  # the SuperLink connection name in $FLWR_HOME/config.toml


class ControlError(RuntimeError):
    """The SuperLink's Control API refused a request or could not be reached."""


def flower_executable(name: str) -> str:
    """Path of a Flower console script installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def service_env(flwr_home: Path, base: Mapping[str, str] | None = None,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process we start: offline settings (via
    :func:`fl.runtime.flower_env`), its own ``FLWR_HOME``, and the venv's bin on PATH."""
    env = dict(os.environ if base is None else base)
    flower_env(env)
    env["FLWR_HOME"] = str(flwr_home)
    bin_dir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if bin_dir not in parts:
        env["PATH"] = os.pathsep.join([bin_dir, *parts])
    if extra:
        env.update(extra)
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(str(value), ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} to a Flower config")


def write_toml_config(path: Path, values: Mapping[str, Any]) -> Path:
    """Write flat ``key = value`` TOML (what ``--node-config``/``--run-config`` accept as a
    file path, which avoids Flower's whitespace-splitting of inline values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_flwr_config(flwr_home: Path, address: str, root_certificates: Path) -> Path:
    """``$FLWR_HOME/config.toml`` with one TLS connection named :data:`CONNECTION`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f"default = {json.dumps(CONNECTION)}\n\n"
        f"[superlink.{CONNECTION}]\n"
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n",
        encoding="utf-8",
    )
    return path


def app_config_keys(app_dir: Path) -> set[str]:
    """Keys of ``[tool.flwr.app.config]``: the only keys a run may override (Flower
    refuses a ``--run-config`` key the app does not declare)."""
    try:
        data = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return set()
    return set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def superlink_command(
    *, host: str, port: int, database: Path, ca_cert: Path, server_cert: Path, server_key: Path
) -> list[str]:
    """``flower-superlink`` with TLS and SuperNode authentication."""
    return [
        flower_executable("flower-superlink"),
        "--ssl-ca-certfile", str(ca_cert),
        "--ssl-certfile", str(server_cert),
        "--ssl-keyfile", str(server_key),
        "--enable-supernode-auth",
        "--database", str(database),
        "--host", host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(
    *, superlink: str, root_certificates: Path, auth_key: Path, node_config: Path, port: int
) -> list[str]:
    """``flower-supernode`` authenticating with ``auth_key`` (OpenSSH) over TLS."""
    return [
        flower_executable("flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(auth_key),
        "--node-config", str(node_config),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]


def run_command(app_dir: Path, run_config: Path | None) -> list[str]:
    """``flwr run <app> fedledger --stream`` (the connection comes from FLWR_HOME)."""
    command = [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
    if run_config is not None:
        command += ["--run-config", str(run_config)]
    return command


@dataclass(frozen=True)
class NodeView:
    """A SuperNode as the SuperLink knows it (status: registered, online, offline,
    unregistered); ``public_key`` is SubjectPublicKeyInfo PEM bytes."""

    node_id: int
    name: str
    status: str
    public_key: bytes

    def to_json(self) -> dict[str, Any]:
        """Plain dict (the key is left out: it is on the ledger)."""
        return {"node_id": str(self.node_id), "name": self.name, "status": self.status}


@dataclass(frozen=True)
class RunView:
    """A run's status as the SuperLink reports it (``finished:completed`` …)."""

    run_id: int
    status: str
    sub_status: str
    details: str


class SuperLinkControl:
    """Register, unregister and list SuperNodes, and read runs, over the Control API.

    Uses Flower's own HTTP client (TLS verified against ``root_certificates``) without
    the CLI's console output, so ``--json`` output stays clean.
    """

    def __init__(self, address: str, root_certificates: Path) -> None:
        from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=False,
            root_certificates=str(root_certificates),
            interceptors=[
                CliClientHttpInterceptor(),
                RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
            ],
        )

    def _call(self, method: str, request: Any) -> Any:
        import httpx
        from flwr.supercore.error import FlowerError

        try:
            return getattr(self._client, method)(request)
        except httpx.HTTPStatusError as exc:
            error = FlowerError.from_json(exc.response.text)
            detail = f"[code {error.code}] {error.message}" if error else exc.response.text[:200]
            raise ControlError(f"SuperLink {self.address} refused {method}: {detail}") from None
        except httpx.HTTPError as exc:
            raise ControlError(f"SuperLink {self.address} unreachable: {exc}") from None

    def nodes(self) -> list[NodeView]:
        """Every node this SuperLink has registered, unregistered ones included."""
        from flwr.proto.control_pb2 import ListNodesRequest

        response = self._call("ListNodes", ListNodesRequest())
        return [
            NodeView(int(n.node_id), n.name, n.status, bytes(n.public_key))
            for n in response.nodes_info
        ]

    def register(self, public_key_pem: bytes, name: str) -> int:
        """Register a node key under ``name``; its node id."""
        from flwr.proto.control_pb2 import RegisterNodeRequest

        response = self._call("RegisterNode", RegisterNodeRequest(public_key=public_key_pem, name=name))
        if not response.node_id:
            raise ControlError(f"SuperLink {self.address} did not register {name}")
        return int(response.node_id)

    def unregister(self, node_id: int) -> None:
        """Unregister a node: its key is refused from its next request on, for good."""
        from flwr.proto.control_pb2 import UnregisterNodeRequest

        self._call("UnregisterNode", UnregisterNodeRequest(node_id=node_id))

    def runs(self) -> list[RunView]:
        """Every run with its status."""
        from flwr.proto.control_pb2 import ListRunsRequest

        response = self._call("ListRuns", ListRunsRequest())
        return [
            RunView(int(run_id), run.status.status, run.status.sub_status, run.status.details)
            for run_id, run in response.run_dict.items()
        ]

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def __enter__(self) -> SuperLinkControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _number_after(text: str, marker: str) -> int | None:
    index = text.rfind(marker)
    if index < 0:
        return None
    words = text[index + len(marker):].split()
    return int(words[0]) if words and words[0].isdigit() else None


def supernode_node_id(log_text: str) -> int | None:
    """The node id a SuperNode logs once the SuperLink activated it (``SuperNode ID: <id>``)."""
    return _number_after(log_text, "SuperNode ID: ")


def refused_exit_code(log_text: str) -> int | None:
    """Flower's own exit code from a log (``Exit Code: 305``: activation refused, e.g. an
    unknown key); the process status itself is only 1."""
    return _number_after(log_text, "Exit Code: ")

