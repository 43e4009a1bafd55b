"""A TCP relay: ``python -m fl.kube.relay --listen 0.0.0.0:9465 --target 127.0.0.1:9464``.

The ServerApp serves Prometheus metrics on the pod's loopback only; this sidecar makes
them reachable on one pod port that a NetworkPolicy can open to the monitoring namespace
alone. Bytes are copied both ways; nothing is parsed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"error: {address!r}: expected host:port")
    return host.strip("[]"), int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], stop: asyncio.Event) -> None:
    """Relay connections on ``listen`` to ``target`` until ``stop`` is set."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:  # the ServerApp is not serving yet: drop the connection
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and relay until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m fl.kube.relay", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port to accept connections on")
    parser.add_argument("--target", required=True, help="host:port to relay them to")
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(_split(args.listen), _split(args.target), stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
