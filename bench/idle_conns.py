#!/usr/bin/env python3
"""Open N idle HTTP/1.1 keep-alive connections to a server and hold them open.

Used by bench/run.sh (scenario 5) to measure a proxy's memory per idle
keep-alive connection. Each connection sends one `GET /` request, reads the
whole response (so the server has really served a request on it), then stays
open without sending anything else.

Protocol with the caller (one line each on stdout):
  READY open=N failed=F closed_by_peer=C [error=...]   all attempts have finished
  FINAL open=N closed_by_peer=C       printed on SIGTERM/SIGINT, then exit 0

Only standard library; talks to one host:port given on the command line.
"""

import argparse
import asyncio
import signal
import sys


class State:
    def __init__(self):
        self.open = 0
        self.failed = 0
        self.closed_by_peer = 0
        self.last_error = ""
        self.writers = []  # keep the transports alive


async def read_response(reader):
    """Read one HTTP/1.1 response (Content-Length or chunked) and return the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # chunk data + CRLF
            if size == 0:
                break
    return status


async def one_connection(host, port, request, limit, state, timeout):
    async with limit:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(request)
            await writer.drain()
            status = await asyncio.wait_for(read_response(reader), timeout)
            if status != 200:
                raise RuntimeError(f"status {status}")
        except Exception as exc:  # noqa: BLE001 - any failure just counts
            state.failed += 1
            state.last_error = repr(exc)
            return
    state.open += 1
    state.writers.append(writer)
    try:
        await reader.read(1)  # returns b"" when the server closes the connection
    except Exception:  # noqa: BLE001
        pass
    state.open -= 1
    state.closed_by_peer += 1


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", "--connections", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=200, help="connection attempts in flight")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per connect/response")
    args = parser.parse_args()

    state = State()
    request = f"GET / HTTP/1.1\r\nHost: localhost:{args.port}\r\nUser-Agent: portico-bench-idle\r\n\r\n".encode()
    limit = asyncio.Semaphore(args.parallel)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = [
        asyncio.create_task(one_connection(args.host, args.port, request, limit, state, args.timeout))
        for _ in range(args.connections)
    ]
    # Wait until every attempt has either failed or reached its idle read.
    while state.open + state.failed + state.closed_by_peer < args.connections and not stop.is_set():
        await asyncio.sleep(0.05)
    error = f" error={state.last_error!r}" if state.failed else ""
    print(f"READY open={state.open} failed={state.failed} closed_by_peer={state.closed_by_peer}{error}", flush=True)

    await stop.wait()
    print(f"FINAL open={state.open} closed_by_peer={state.closed_by_peer}", flush=True)
    for task in tasks:
        task.cancel()
    for writer in state.writers:
        writer.transport.abort()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
