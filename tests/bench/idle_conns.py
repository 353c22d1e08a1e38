#!/usr/bin/env python3
"""Open N keep-alive agent connections to tollgate and hold them idle.

Each connection sends one authenticated GET (HTTP/1.1, keep-alive), reads the whole response and then stays
open without sending anything else, as an agent between calls would. When every connection is open and idle
the script prints one line `READY <open> <ok>` (connections open, responses that were 200) and holds them
for `--hold` seconds (or until it is terminated), then closes them all and exits. The caller reads VmRSS of
the server in between.

Usage: idle_conns.py HOST PORT PATH KEY [-n 1000] [--hold 60]
Only loopback addresses are accepted.
"""

import argparse
import asyncio
import ipaddress
import sys


async def open_one(host, port, request, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        return reader, writer, status


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("path")
    p.add_argument("key")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--hold", type=float, default=60.0)
    a = p.parse_args()
    if not ipaddress.ip_address(a.host).is_loopback:
        sys.exit("idle_conns.py: loopback addresses only")

    request = (
        f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
        f"Authorization: Bearer {a.key}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    # Open them 50 at a time so the accept queue is never the thing being measured.
    sem = asyncio.Semaphore(50)
    results = await asyncio.gather(
        *(open_one(a.host, a.port, request, sem) for _ in range(a.n)), return_exceptions=True
    )
    conns = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    ok = sum(1 for _, _, status in conns if status == 200)
    if errors:
        print(f"errors: {len(errors)} (first: {errors[0]!r})", file=sys.stderr)
    print(f"READY {len(conns)} {ok}", flush=True)

    # Hold them, idle, until the caller has read what it wanted and sends SIGTERM (or --hold runs out).
    await asyncio.sleep(a.hold)
    for _, writer, _ in conns:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
