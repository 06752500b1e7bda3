"""Watches a stream's acks from a process of its own, for bench/driver.py.

A core NATS subscription to ``$JS.ACK.<stream>.>`` receives every ack a
consumer sends. The driver used to take each ack's time in its own event
loop, which also publishes, seeds Valkey and reads PubAcks: on a busy
two-core machine that loop runs late by up to a few milliseconds (p99
about 2 ms at 1,000 events/s), and every ack it saw late counted as
latency of the consumer. Here a process that does nothing else takes the
times, and the driver reads them from its stdout:

    python ackwatch.py STREAM [--nats-url URL[,URL...]]

prints ``ready`` once subscribed, then one line per ack message,
``<stream_seq> <kind> <monotonic_s> <wall_ns> <stored_ns>``: kind is
``ack``, ``term``, ``nak`` or ``other`` (in progress, next), the two
clocks are read as the message arrives (``time.monotonic()`` is the
system's CLOCK_MONOTONIC, the same clock in every process), and
``stored_ns`` is the time the server stored the event (the ack subject's
timestamp token). It ends when its stdin closes.

Ack subjects are ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream_seq>.
<consumer_seq>.<ts>.<pending>`` (9 tokens), or with a domain and an account
hash after ``ACK`` (11 or 12 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import nats

READY = "ready"


def parse(subject: str, data: bytes) -> tuple[int, str, int] | None:
    """(stream sequence, kind, stored-at ns) of an ack message, or None."""
    tokens = subject.split(".")
    if len(tokens) == 9:
        sseq, stored = int(tokens[5]), int(tokens[7])
    elif len(tokens) >= 11:
        sseq, stored = int(tokens[7]), int(tokens[9])
    else:
        return None
    if data == b"" or data.startswith(b"+ACK"):
        kind = "ack"
    elif data.startswith(b"+TERM"):
        kind = "term"
    elif data.startswith(b"-NAK"):
        kind = "nak"
    else:
        kind = "other"  # +WPI (in progress) and +NXT settle nothing
    return sseq, kind, stored


class AckWatch:
    """Every ack of one stream, with the time it was seen, by stream sequence."""

    def __init__(self) -> None:
        self.acked: dict[int, float] = {}
        # When the server stored the event and when its ack was seen, both
        # wall-clock ns: publish -> stored -> acked, split.
        self.stored_ns: dict[int, int] = {}
        self.acked_wall_ns: dict[int, int] = {}
        self.terms = 0
        self.naks = 0
        self.first: float | None = None
        self.last: float | None = None
        self.times: list[float] = []  # every first ack's time, in arrival order
        self._proc = None
        self._reader = None

    def record(self, sseq: int, kind: str, seen: float, wall_ns: int, stored_ns: int) -> None:
        if kind in ("ack", "term"):
            if kind == "term":
                self.terms += 1
            if sseq not in self.acked:
                self.acked[sseq] = seen
                self.stored_ns[sseq] = stored_ns
                self.acked_wall_ns[sseq] = wall_ns
                self.times.append(seen)
                if self.first is None:
                    self.first = seen
                self.last = seen
        elif kind == "nak":
            self.naks += 1

    async def start(self, python: str, stream: str, nats_url: str) -> None:
        """Starts the watcher process and returns once it is subscribed."""
        self._proc = await asyncio.create_subprocess_exec(
            python, __file__, stream, "--nats-url", nats_url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        if line.decode().strip() != READY:
            raise RuntimeError(f"the ack watcher for {stream} did not start: {line!r}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for line in self._proc.stdout:
            sseq, kind, seen, wall_ns, stored_ns = line.split()
            self.record(int(sseq), kind.decode(), float(seen), int(wall_ns), int(stored_ns))

    async def stop(self) -> None:
        """Ends the watcher; every ack it saw before is recorded."""
        if self._proc is None:
            return
        self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._reader, 10)
        finally:
            if self._proc.returncode is None:
                self._proc.kill()
            await self._proc.wait()
            self._proc = None


async def watch(stream: str, nats_url: str) -> None:
    nc = await nats.connect(servers=nats_url.split(","))
    out = sys.stdout

    async def on_ack(msg) -> None:
        seen, wall_ns = time.monotonic(), time.time_ns()
        parsed = parse(msg.subject, msg.data)
        if parsed:
            sseq, kind, stored = parsed
            out.write(f"{sseq} {kind} {seen!r} {wall_ns} {stored}\n")

    for subject in (f"$JS.ACK.{stream}.>", f"$JS.ACK.*.*.{stream}.>"):
        await nc.subscribe(subject, cb=on_ack)
    await nc.flush()
    print(READY, flush=True)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.01)
            out.flush()

    flushing = asyncio.create_task(flusher())
    loop = asyncio.get_running_loop()
    # stdin closing (the driver done, or gone) ends the watch.
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    await nc.drain()
    flushing.cancel()
    out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    asyncio.run(watch(args.stream, args.nats_url))


if __name__ == "__main__":
    main()
