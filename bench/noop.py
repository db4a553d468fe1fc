"""The floor: a grpc.aio Authorization/Check that parses nothing and returns fixed bytes.

Same server library, same settings as extauth; whatever extauth costs above this is
what the project adds. Usage: python bench/noop.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

# A pre-serialized CheckResponse{status: {code: 0}, ok_response: {}}.
ALLOW = bytes([0x0A, 0x00, 0x1A, 0x00])


async def check(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return ALLOW


async def main(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.auth.v3.Authorization",
                {"Check": grpc.unary_unary_rpc_method_handler(check)},
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop Check on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    try:  # the same event loop extauth uses, for a fair floor
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
