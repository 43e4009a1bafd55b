"""The coordinator pod's metrics relay, on loopback: bytes both ways, and a closed
target drops the connection instead of hanging it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fl.kube.relay import serve

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_relay_carries_a_request_and_its_answer_and_drops_when_the_target_is_down() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            writer.write(b"metrics:" + data)
            await writer.drain()
            writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        listen, dead = _free_port(), _free_port()
        stop = asyncio.Event()
        relays = [asyncio.create_task(serve(("127.0.0.1", listen), ("127.0.0.1", target_port), stop)),
                  asyncio.create_task(serve(("127.0.0.1", dead), ("127.0.0.1", _free_port()), stop))]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        writer.write(b"GET /metrics")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", dead)
        dropped = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        stop.set()
        await asyncio.gather(*relays)
        target.close()
        return answer, dropped

    answer, dropped = asyncio.run(scenario())
    assert answer == b"metrics:GET /metrics"
    assert dropped == b""
