"""The listening socket of `medsearch serve` and the test/bench servers: kept-alive requests are
answered without waiting on Nagle's algorithm."""

from __future__ import annotations

import asyncio
import socket

from medsearch.api import _listen


def test_given_the_servers_listener_when_a_connection_is_accepted_then_tcp_nodelay_is_on() -> None:
    # uvicorn hands the socket to asyncio's create_server, as this does
    listener = _listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    seen: list[int] = []

    async def accept_one() -> None:
        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted = writer.get_extra_info("socket")
            seen.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(accept_one())
    # Then the accepted connection sends each write at once (no ~40 ms delayed-ACK stall)
    assert seen == [1]
