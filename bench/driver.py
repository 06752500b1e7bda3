"""End-to-end benchmark: one workload through each consumer, one after another.

Variants (see bench/README.md):

- ``wasm``: ``switchyard serve`` with the story-transitions plugin
  (``invalidation = "delete-matching"``, the default).
- ``wasm-scan``: the same with ``invalidation = "scan"`` (a SCAN per event),
  for the scale curve only.
- ``native``: ``switchyard-native serve``, the same handler compiled into the
  host (plugin file ``native:story-transitions``); skipped while the binary
  is not built.
- ``python-seed`` / ``python-tuned``: ``bench/python/consumer.py``, the
  original Python design, one message at a time or 64 at once.

Each measured point gets a fresh stream ``BENCH_<n>`` (subjects
``bench<n>.>``), a flushed Valkey database seeded with a background keyspace
of ``context:bg<i>:part`` keys plus 1 to 3 keys for each story ``S<i>``,
and a backlog of transition events published before the consumer starts.
Acks are watched on ``$JS.ACK.<stream>.>`` (a core subscription sees every
ack a consumer sends), which gives the first and last ack of the drain and,
with the stream sequence in the ack subject, the latency of each event at a
fixed publish rate.

Writes ``bench/results/latest.json`` and ``latest.md``. A benchmark, not a
test: nothing here judges the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import glob
import json
import math
import os
import re
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nats
import redis
from nats.js.api import StorageType

from ackwatch import AckWatch

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "target/wasm/wasm32-wasip2/wasm/story_transitions.wasm"
SWITCHYARD = ROOT / "target/release/switchyard"
SWITCHYARD_NATIVE = ROOT / "target/release/switchyard-native"
CONSUMER = ROOT / "bench/python/consumer.py"
DURABLE = "context-planning-story-transitions"
HANDLER = "story-transitions"
KEY_PREFIX = "context:"
# Handler concurrency (and instance slots) of the Switchyard variants.
CONCURRENCY = 1024
PHASES = ("dev", "review")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = 1 / 1024  # VmHWM is in KiB

BEHIND_SECS = 1.0  # a rate run whose last ack comes later than this after its last publish fell behind
ROW_RATE = 1000  # the rows' latency comes from this publish rate
MAIN_VARIANTS = ("wasm", "native", "python-seed", "python-tuned")
SCALE_VARIANTS = ("wasm-scan", "wasm")


@dataclass
class Profile:
    """How much of everything one run does."""

    events: int  # backlog per main point
    rates: list[int]  # publish rates of the latency runs, events/s
    rate_secs: float  # how long each rate is held
    settle_secs: float  # after a rate run, how long acks may still come
    cap_secs: float  # drain time limit per point
    memory_graph: bool  # also run the main variants on the memory:// graph
    memory_graph_rates: list[int]
    keyspaces: list[int]  # scale curve
    scale_events: int
    scale_rate: int  # the scale curve's p99 comes from this rate
    main_keyspace: int = 1000
    # Main points of the Switchyard variants drain this many more events
    # first and open their rate window at the warmup-th ack: start-up, the
    # instance pool, connections and Neo4j's first queries of a new stream
    # are not in the rate. The Python variants start at their first ack
    # (they never get through a warm-up within the cap).
    warmup: int = 0
    # Before the first point, Neo4j runs single-row MERGE transactions (the
    # handler's query shape, on a label of its own) for this long: a JVM
    # just started compiles its hot paths for the first tens of seconds,
    # and whichever variant ran first would pay for it. The last half of
    # them is Neo4j's own commit latency on this machine, in the results.
    neo4j_warmup_secs: float = 0.0

    @staticmethod
    def of(quick: bool) -> "Profile":
        if quick:
            return Profile(
                events=2000,
                rates=[200, 1000],
                rate_secs=3,
                settle_secs=3,
                cap_secs=8,
                memory_graph=False,
                memory_graph_rates=[],
                keyspaces=[1000, 100_000],
                scale_events=1000,
                scale_rate=100,
                warmup=1000,
                neo4j_warmup_secs=10,
            )
        return Profile(
            events=10_000,
            rates=[200, 1000, 2000, 5000],
            rate_secs=10,
            settle_secs=15,
            cap_secs=60,
            memory_graph=True,
            memory_graph_rates=[1000],
            keyspaces=[1000, 10_000, 100_000, 1_000_000],
            scale_events=5000,
            scale_rate=200,
            warmup=2000,
            neo4j_warmup_secs=30,
        )


# --- the machine and the processes -------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs, {model}, {mem_gib:.0f} GiB RAM, "
        f"Linux {platform.release()}"
    )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is parenthesised and may hold spaces: cut after ')'.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        p = queue.pop()
        pids.append(p)
        queue.extend(_children(p))
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its live descendants, plus what its
    waited-for children used (cutime + cstime)."""
    total = 0
    for p in _tree(pid):
        fields = _stat_fields(p)
        if fields:
            # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17.
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / CLK_TCK


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of the process and its live descendants, MiB."""
    total, seen = 0, False
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    seen = True
        except OSError:
            pass
    return round(total * PAGE_MIB, 1) if seen else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- acks and publishes -------------------------------------------------------


class Publisher:
    """Publishes on core NATS with a reply inbox per message, so each PubAck
    (the stream sequence) comes back without a request future per message."""

    def __init__(self, nc, subject: str) -> None:
        self.nc = nc
        self.subject = subject
        self.inbox = nc.new_inbox()
        self.seq_of: dict[int, int] = {}
        self.errors = 0
        self.sent = 0
        self._sub = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_puback)

    async def _on_puback(self, msg) -> None:
        index = int(msg.subject.rsplit(".", 1)[1])
        try:
            reply = json.loads(msg.data)
        except ValueError:
            self.errors += 1
            return
        if "seq" in reply and "error" not in reply:
            self.seq_of[index] = reply["seq"]
        else:
            self.errors += 1

    async def publish(self, index: int, payload: bytes) -> None:
        await self.nc.publish(self.subject, payload, reply=f"{self.inbox}.{index}")
        self.sent += 1

    async def wait_pubacks(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        await self.nc.flush()
        while len(self.seq_of) + self.errors < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if len(self.seq_of) < count:
            raise RuntimeError(
                f"only {len(self.seq_of)} of {count} publishes to {self.subject} "
                f"were stored ({self.errors} refused)"
            )

    async def stop(self) -> None:
        if self._sub:
            await self._sub.unsubscribe()


# --- one measured point --------------------------------------------------------


@dataclass
class Services:
    nats_url: str
    redis_url: str
    neo4j_url: str
    python: str
    work: Path


@dataclass
class Point:
    variant: str
    keyspace: int
    graph: str  # "neo4j" or "memory"
    events: int
    rates: list[int]
    n: int  # stream number
    warmup: int = 0  # acks before the rate window opens (see Profile.warmup)
    result: dict = field(default_factory=dict)
    http_port: int | None = None  # a Switchyard variant's /metrics

    @property
    def backlog(self) -> int:
        return self.warmup + self.events

    @property
    def stream(self) -> str:
        return f"BENCH_{self.n}"

    @property
    def subject(self) -> str:
        return f"bench{self.n}.story.transitioned"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(text: str, limit: int = 300) -> str:
    """`text` without terminal colours, its lines joined, cut at `limit`."""
    flat = " ".join(ANSI.sub("", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def story_keys(i: int) -> list[str]:
    """Story S<i> owns 1 to 3 keys: the bare key and some phase keys."""
    bare = f"{KEY_PREFIX}S{i}"
    return [bare] + [f"{bare}:{phase}" for phase in PHASES[: i % 3]]


def seed_background(cache: redis.Redis, count: int) -> None:
    batch = 10_000
    pipe = cache.pipeline(transaction=False)
    for n, start in enumerate(range(0, count, batch)):
        pipe.mset({f"{KEY_PREFIX}bg{i}:part": b"x" for i in range(start, min(count, start + batch))})
        if n % 10 == 9:
            pipe.execute()
    pipe.execute()


def seed_stories(cache: redis.Redis, stories: range) -> int:
    """Writes the keys of stories S<i> for i in `stories`; returns how many."""
    pipe = cache.pipeline(transaction=False)
    keys = 0
    chunk: dict[str, bytes] = {}
    for i in stories:
        for key in story_keys(i):
            chunk[key] = b"rendered context"
            keys += 1
        if len(chunk) >= 10_000:
            pipe.mset(chunk)
            chunk = {}
    if chunk:
        pipe.mset(chunk)
    pipe.execute()
    return keys


def count_keys(cache: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in cache.scan_iter(match=pattern, count=10_000))


def payload(i: int, base: dt.datetime) -> bytes:
    timestamp = (base + dt.timedelta(microseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        {"story_id": f"S{i}", "from_phase": "dev", "to_phase": "review", "timestamp": timestamp}
    ).encode()


def config_toml(point: Point, services: Services, plugin: str, http_port: int) -> str:
    invalidation = "scan" if point.variant == "wasm-scan" else "delete-matching"
    graph = services.neo4j_url if point.graph == "neo4j" else "memory://"
    return f"""# Generated by bench/driver.py for {point.variant}, point {point.n}.
[nats]
url = "{services.nats_url}"
stream = "{point.stream}"
stream_subjects = ["bench{point.n}.>"]

[cache]
url = "{services.redis_url}"

[graph]
url = "{graph}"

[http]
listen = "127.0.0.1:{http_port}"

[[handlers]]
name = "{HANDLER}"
plugin = "{plugin}"
subjects = ["{point.subject}"]
durable = "{DURABLE}"
# Events in flight. Each waits on the shared sweep (and graph batch) with
# the others, so in-flight events are what one sweep serves at once.
concurrency = {CONCURRENCY}
max_ack_pending = {CONCURRENCY}
drain_grace = "2s"

[handlers.config]
key_prefix = "{KEY_PREFIX}"
invalidation = "{invalidation}"

[handlers.grants]
cache_keys = ["{KEY_PREFIX}*"]
graph_labels = ["PhaseTransition"]

[runtime]
max_instances = {CONCURRENCY}
"""


def command(point: Point, services: Services, work: Path) -> list[str]:
    """The variant's command line."""
    if point.variant.startswith("python-"):
        mode = point.variant.removeprefix("python-")
        neo4j = services.neo4j_url if point.graph == "neo4j" else "none"
        return [
            services.python, str(CONSUMER), "--mode", mode,
            "--nats-url", services.nats_url, "--stream", point.stream,
            "--durable", DURABLE, "--subject", point.subject,
            "--redis-url", services.redis_url, "--neo4j-url", neo4j,
        ]
    if point.variant == "native":
        plugin = work / "story-transitions.native"
        plugin.write_text("native:story-transitions")
        binary = SWITCHYARD_NATIVE
    else:
        plugin = PLUGIN
        binary = SWITCHYARD
    config = work / f"{point.stream}.toml"
    point.http_port = free_port()
    config.write_text(config_toml(point, services, str(plugin), point.http_port))
    return [str(binary), "serve", "--config", str(config)]


def skipped(variant: str) -> str | None:
    if variant == "native" and not SWITCHYARD_NATIVE.exists():
        return f"{SWITCHYARD_NATIVE.relative_to(ROOT)} is not built"
    if variant in ("wasm", "wasm-scan"):
        if not SWITCHYARD.exists():
            return f"{SWITCHYARD.relative_to(ROOT)} is not built"
        if not PLUGIN.exists():
            return f"{PLUGIN.relative_to(ROOT)} is not built"
    return None


class Run:
    def __init__(self, services: Services, profile: Profile) -> None:
        self.services = services
        self.profile = profile
        self.cache = redis.Redis.from_url(services.redis_url)
        self.next_stream = 1
        self.nc = None  # publishes and the JetStream API

    async def connect(self) -> None:
        self.nc = await nats.connect(self.services.nats_url)
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        if self.nc:
            await self.nc.close()

    def point(
        self, variant: str, keyspace: int, graph: str, events: int, rates: list[int], warmup: int = 0
    ) -> Point:
        if variant.startswith("python"):
            warmup = 0
        point = Point(variant, keyspace, graph, events, rates, self.next_stream, warmup)
        self.next_stream += 1
        return point

    async def measure(self, point: Point) -> dict:
        result = {
            "variant": point.variant,
            "keyspace": point.keyspace,
            "graph": point.graph,
            "events": point.events,
            "warmup_events": point.warmup,
        }
        reason = skipped(point.variant)
        if reason:
            result["skipped"] = reason
            log(f"  {point.variant}: skipped ({reason})")
            return result
        began = time.monotonic()
        try:
            await self._measure(point, result)
        except Exception as e:  # report the point as failed, go on with the others
            # One line for the tables; the variant's log has the rest.
            result["error"] = one_line(f"{type(e).__name__}: {e}")
            log(f"  {point.variant}: failed: {result['error']}")
        finally:
            try:
                await self.js.delete_stream(point.stream)
            except Exception:
                pass
            result["elapsed_s"] = round(time.monotonic() - began, 1)
        return result

    async def _measure(self, point: Point, result: dict) -> None:
        cache = self.cache
        try:
            await self.js.delete_stream(point.stream)
        except Exception:
            pass
        await self.js.add_stream(
            name=point.stream, subjects=[f"bench{point.n}.>"], storage=StorageType.FILE
        )

        t = time.monotonic()
        cache.flushdb()
        seed_background(cache, point.keyspace)
        result["story_keys"] = seed_stories(cache, range(point.backlog))
        result["seed_s"] = round(time.monotonic() - t, 2)

        watch = AckWatch()
        await watch.start(self.services.python, point.stream, self.services.nats_url)
        publisher = Publisher(self.nc, point.subject)
        await publisher.start()
        base = dt.datetime.now(dt.timezone.utc)
        for i in range(point.backlog):
            await publisher.publish(i, payload(i, base))
            if publisher.sent - len(publisher.seq_of) > 5000:
                while publisher.sent - len(publisher.seq_of) - publisher.errors > 1000:
                    await asyncio.sleep(0.001)
        await publisher.wait_pubacks(point.backlog)

        argv = command(point, self.services, self.services.work)
        log_path = self.services.work / f"{point.stream}-{point.variant}.log"
        with open(log_path, "wb") as log_file:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL,
                cwd=ROOT,
            )
        try:
            await self._drain(point, result, proc, watch, started, log_path)
            # Correctness: the story keys of every acked event must be gone.
            left, expected = await self._settle(point, watch, publisher, range(point.backlog))
            result["keys_left"], result["keys_left_expected"] = left, expected
            if left > expected:
                log(f"  {point.variant}: {left} story keys left after the drain, only {expected} expected")
            await self._latency_runs(point, result, watch, publisher)
            result["rss_mib"] = peak_rss_mib(proc.pid)
            if point.http_port:
                work = await asyncio.to_thread(shared_work, point.http_port)
                if work:
                    result["shared_work"] = work
                    log(f"  {point.variant}: shared work {work}")
        finally:
            await stop(proc)
            await asyncio.sleep(0.3)  # the last acks of the shutdown
            await watch.stop()
            await publisher.stop()
        result["background_keys_lost"] = point.keyspace - cache.dbsize()
        result["naks"] = watch.naks
        result["terms"] = watch.terms

    async def _settle(self, point: Point, watch: AckWatch, publisher: Publisher, stories: range) -> tuple[int, int]:
        """Ends a phase: purges what the consumer did not get to (so the next
        phase starts caught up), waits for it to settle what it holds, then
        counts the story keys left against those of the unacked events, and
        deletes them so the next phase starts at the background keyspace."""
        if not await self._caught_up(point, 0.5):
            await self.js.purge_stream(point.stream)
            await self._caught_up(point, self.profile.settle_secs)
            # Purged messages leave the server's pending counts at once, but
            # the consumer still finishes those it holds: wait for its acks
            # to stop.
            deadline = time.monotonic() + self.profile.settle_secs
            while time.monotonic() < deadline and time.monotonic() - (watch.last or 0) < 1.0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # acks still on their way
        unacked = [i for i in stories if publisher.seq_of.get(i) not in watch.acked]
        expected = sum(len(story_keys(i)) for i in unacked)
        left = count_keys(self.cache, f"{KEY_PREFIX}S*")
        leftovers = list(self.cache.scan_iter(match=f"{KEY_PREFIX}S*", count=10_000))
        for start in range(0, len(leftovers), 10_000):
            self.cache.unlink(*leftovers[start : start + 10_000])
        return left, expected

    async def _drain(self, point, result, proc, watch: AckWatch, started: float, log_path) -> None:
        """Waits for the backlog to be acked (or the cap). The rate window
        opens at the point's warm-up ack (its first ack without warm-up)
        and closes at the last ack; CPU is sampled at the same two moments
        (at this loop's 20 ms resolution)."""
        cap = self.profile.cap_secs
        window = None  # (cpu, acked) when the rate window opened
        startup_deadline = started + 60
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if proc.returncode is not None:
                raise RuntimeError(f"{point.variant} exited with {proc.returncode}: {tail(log_path)}")
            if watch.first is None:
                if now > startup_deadline:
                    raise RuntimeError(f"{point.variant}: no ack within 60 s: {tail(log_path)}")
                continue
            if "startup_s" not in result:
                result["startup_s"] = round(watch.first - started, 2)
            if window is None and len(watch.times) > point.warmup:
                window = (cpu_seconds(proc.pid), len(watch.acked))
            if len(watch.acked) >= point.backlog:
                break
            if now - watch.first >= cap:
                result["capped"] = True
                break
        cpu_end, acked_end = cpu_seconds(proc.pid), len(watch.acked)
        result["acked"] = acked_end
        opened_at = min(point.warmup, len(watch.times) - 1)
        opened = watch.times[opened_at]
        if window is None:
            window = (cpu_seconds(proc.pid), acked_end)
        if result.get("capped"):
            elapsed = max(time.monotonic() - opened, 1e-6)
        else:
            elapsed = max(watch.last - opened, 1e-6)
        result["drain_s"] = round(elapsed, 3)
        # The window opens at an ack, so the acks counted are those after it.
        result["events_per_s"] = round(max(acked_end - 1 - opened_at, 1) / elapsed, 1)
        handled = acked_end - window[1]
        if handled > 0:
            result["cpu_s_per_10k"] = round((cpu_end - window[0]) / handled * 10_000, 3)
        state = "capped" if result.get("capped") else "drained"
        warm = f" after {opened_at} warm-up acks" if opened_at else ""
        log(
            f"  {point.variant}: {state} {acked_end}/{point.backlog} in {elapsed:.2f}s{warm} "
            f"= {result['events_per_s']} events/s, cpu {result.get('cpu_s_per_10k')} s/10k"
        )

    async def _caught_up(self, point: Point, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await self.js.consumer_info(point.stream, DURABLE)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return True
            except Exception:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def _latency_runs(self, point: Point, result: dict, watch: AckWatch, publisher: Publisher) -> None:
        """Publishes at each rate for rate_secs, the consumer caught up, and
        takes each event's latency from its publish to its ack. A story's
        keys are written just before its event is published, so the
        keyspace stays at the background keys plus the stories in flight."""
        profile, cache = self.profile, self.cache
        runs = []
        next_index = point.backlog
        saturated_at = None
        for rate in point.rates:
            if saturated_at is not None and rate != ROW_RATE:
                runs.append({"rate": rate, "skipped": f"not keeping up at {saturated_at} events/s"})
                continue
            count = int(rate * profile.rate_secs)
            first = next_index
            next_index += count
            stories = range(first, first + count)
            base = dt.datetime.now(dt.timezone.utc)
            sent_at: dict[int, float] = {}
            sent_wall_ns: dict[int, int] = {}
            t0 = time.monotonic()
            k = 0
            while k < count:
                due = min(count, int((time.monotonic() - t0) * rate) + 1)
                if due > k:
                    seed_stories(cache, range(first + k, first + due))
                    while k < due:
                        sent_at[first + k] = time.monotonic()
                        sent_wall_ns[first + k] = time.time_ns()
                        await publisher.publish(first + k, payload(first + k, base))
                        k += 1
                await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
            last_publish = time.monotonic()
            published_s = last_publish - t0
            await publisher.wait_pubacks(publisher.sent, timeout=10)
            end = time.monotonic() + profile.settle_secs
            while time.monotonic() < end:
                if all(publisher.seq_of.get(i) in watch.acked for i in stories):
                    break
                await asyncio.sleep(0.02)
            waited_until = time.monotonic()
            latencies, unacked = [], 0
            for i in stories:
                seq = publisher.seq_of.get(i)
                if seq in watch.acked:
                    latencies.append((watch.acked[seq] - sent_at[i]) * 1000)
                else:
                    # Not acked in time: counted at the wait's end, so the
                    # percentiles are lower bounds.
                    unacked += 1
                    latencies.append((waited_until - sent_at[i]) * 1000)
            latencies.sort()
            # The same latency in two legs, by the server's clock in between:
            # publish to stored in the stream, stored to ack seen.
            to_stored, stored_to_ack = [], []
            for i in stories:
                seq = publisher.seq_of.get(i)
                if seq in watch.acked:
                    to_stored.append((watch.stored_ns[seq] - sent_wall_ns[i]) / 1e6)
                    stored_to_ack.append((watch.acked_wall_ns[seq] - watch.stored_ns[seq]) / 1e6)
            to_stored.sort()
            stored_to_ack.sort()
            # All acked, but long after the last publish: the consumer fell
            # behind during the run and caught up afterwards.
            last_ack = max((watch.acked.get(publisher.seq_of.get(i), 0.0) for i in stories), default=0.0)
            behind = not unacked and last_ack - last_publish > BEHIND_SECS
            run = {
                "rate": rate,
                "sent": count,
                "achieved_rate": round(count / published_s, 1),
                "acked": count - unacked,
                "p50_ms": rounded(percentile(latencies, 50)),
                "p99_ms": rounded(percentile(latencies, 99)),
                "p999_ms": rounded(percentile(latencies, 99.9)),
                "publish_to_stored_ms": {
                    "p50": rounded(percentile(to_stored, 50)),
                    "p99": rounded(percentile(to_stored, 99)),
                },
                "stored_to_ack_ms": {
                    "p50": rounded(percentile(stored_to_ack, 50)),
                    "p99": rounded(percentile(stored_to_ack, 99)),
                },
            }
            left, expected = await self._settle(point, watch, publisher, stories)
            run["keys_left"], run["keys_left_expected"] = left, expected
            if unacked:
                run["saturated"] = True
            if behind:
                run["behind"] = True
            if unacked or behind:
                saturated_at = saturated_at or rate
            runs.append(run)
            log(
                f"  {point.variant} @ {rate}/s: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                f"p99.9 {run['p999_ms']} ms (publish to stored p99 {run['publish_to_stored_ms']['p99']}, "
                f"stored to ack p99 {run['stored_to_ack_ms']['p99']})"
                + (f" (saturated: {unacked} of {count} not acked in time)" if unacked else "")
                + (f" (behind: the last ack came {last_ack - last_publish:.1f}s after the last publish)" if behind else "")
            )
            if left > expected:
                log(f"  {point.variant} @ {rate}/s: {left} story keys left, {expected} expected")
        result["latency"] = runs


async def stop(proc) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


# The host's own counters of shared work, read from /metrics at a point's end.
SHARED_WORK = {
    "graph_transactions": "switchyard_graph_transactions_total",
    "graph_rows_written": "switchyard_graph_rows_written_total",
    "cache_sweeps": "switchyard_cache_sweeps_total",
    "cache_sweep_calls": "switchyard_cache_sweep_calls_total",
}


def shared_work(port: int) -> dict | None:
    """How the host shared its backend work over the whole point: upserts
    per graph transaction and invalidations per sweep."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        for key, series in SHARED_WORK.items():
            if name == series:
                values[key] = float(value)
    out = {k: int(v) for k, v in values.items()}
    if values.get("graph_transactions"):
        out["rows_per_transaction"] = round(values["graph_rows_written"] / values["graph_transactions"], 2)
    if values.get("cache_sweeps"):
        out["calls_per_sweep"] = round(values["cache_sweep_calls"] / values["cache_sweeps"], 2)
    return out


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


WARMUP_LABEL = "SwitchyardBenchWarmup"


def warm_neo4j(url: str, seconds: float, rate: int = 200) -> dict:
    """Single-row `UNWIND ... MERGE` transactions at about `rate` per second
    for `seconds` (the official driver, one managed write transaction
    each), then the warm-up nodes deleted. Returns the commit latency of
    the second half, when the JVM has compiled what the benchmark uses."""
    import neo4j  # the venv's official driver, as the Python variants use

    cypher = f"UNWIND $rows AS row MERGE (n:`{WARMUP_LABEL}` {{id: row.id}}) SET n += row.props"
    latencies: list[float] = []
    driver = neo4j.GraphDatabase.driver(url, auth=None)
    try:
        with driver.session() as session:
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < seconds:
                rows = [{"id": f"w{i % 1000}", "props": {"n": i}}]
                t = time.perf_counter()
                session.execute_write(lambda tx: tx.run(cypher, rows=rows).consume())
                latencies.append((time.perf_counter() - t) * 1000)
                i += 1
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            session.run(f"MATCH (n:`{WARMUP_LABEL}`) DETACH DELETE n").consume()
    finally:
        driver.close()
    measured = sorted(latencies[len(latencies) // 2:])
    return {
        "transactions": len(latencies),
        "rate": rate,
        "p50_ms": rounded(percentile(measured, 50)),
        "p99_ms": rounded(percentile(measured, 99)),
        "p999_ms": rounded(percentile(measured, 99.9)),
    }


# --- assembling the results ----------------------------------------------------


def sandbox_overhead() -> dict | None:
    """Wasm minus native time per event from the criterion bench `overhead`
    (group per_event), when it has been run."""

    def estimate(name: str) -> float | None:
        paths = sorted(glob.glob(str(ROOT / f"target/criterion/**/{name}/new/estimates.json"), recursive=True))
        for path in paths:
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                continue
            for key in ("slope", "mean"):
                value = (data.get(key) or {}).get("point_estimate")
                if value is not None:
                    return float(value)
        return None

    wasm, native = estimate("wasm_story_transition"), estimate("native_story_transition")
    if wasm is None or native is None:
        return None
    noop = estimate("wasm_noop")
    return {
        "source": "target/criterion/per_event (cargo bench -p switchyard-bench)",
        "wasm_story_transition_ns": round(wasm, 1),
        "native_story_transition_ns": round(native, 1),
        "wasm_noop_ns": None if noop is None else round(noop, 1),
        "overhead_us": round((wasm - native) / 1000, 2),
    }


def row(result: dict, rate: int = ROW_RATE) -> dict:
    at = next((r for r in result.get("latency", []) if r.get("rate") == rate and "p50_ms" in r), {})
    out = {
        "variant": result["variant"],
        "events_per_s": result.get("events_per_s"),
        "p50_ms": at.get("p50_ms"),
        "p99_ms": at.get("p99_ms"),
        "p999_ms": at.get("p999_ms"),
        "cpu_s_per_10k": result.get("cpu_s_per_10k"),
        "rss_mib": result.get("rss_mib"),
    }
    for key in ("skipped", "error"):
        if key in result:
            out[key] = result[key]
    if at.get("saturated"):
        out["latency_saturated"] = True
    elif at.get("behind"):
        out["latency_behind"] = True
    if result.get("capped"):
        out["capped"] = True
    return out


def ratio(a: dict | None, b: dict | None) -> float | None:
    x = (a or {}).get("events_per_s")
    y = (b or {}).get("events_per_s")
    return round(x / y, 2) if x and y else None


def assemble(
    profile: Profile, quick: bool, main: list[dict], memory: list[dict], scale: list[dict],
    started: float, fsync: str,
) -> dict:
    by_variant = {r["variant"]: r for r in main}
    overhead = sandbox_overhead()
    return {
        "machine": machine(),
        "note": f"rows are at the {profile.main_keyspace:,}-key keyspace with the real Neo4j graph",
        "rows": [row(r) for r in main],
        "ratios": {
            "wasm_vs_native": ratio(by_variant.get("wasm"), by_variant.get("native")),
            "wasm_vs_python_seed": ratio(by_variant.get("wasm"), by_variant.get("python-seed")),
            "wasm_vs_python_tuned": ratio(by_variant.get("wasm"), by_variant.get("python-tuned")),
        },
        "sandbox_overhead_us": overhead["overhead_us"] if overhead else None,
        "scale": [
            {
                "variant": r["variant"],
                "keyspace": r["keyspace"],
                "events_per_s": r.get("events_per_s"),
                "p99_ms": next((x.get("p99_ms") for x in r.get("latency", []) if "p99_ms" in x), None),
                **({"p99_saturated": True} if any(x.get("saturated") for x in r.get("latency", [])) else {}),
                **({"capped": True} if r.get("capped") else {}),
                **({"naks": r["naks"]} if r.get("naks") else {}),
                **({k: r[k] for k in ("skipped", "error") if k in r}),
            }
            for r in scale
        ],
        "memory_graph": [row(r) for r in memory],
        "latency": [
            {"variant": r["variant"], "graph": r["graph"], **x}
            for r in main + memory
            for x in r.get("latency", [])
        ],
        "keys_left": [
            {
                "variant": r["variant"],
                "keyspace": r["keyspace"],
                "graph": r["graph"],
                "after_drain": r.get("keys_left"),
                "after_drain_expected": r.get("keys_left_expected"),
                "after_latency": sum(x.get("keys_left", 0) for x in r.get("latency", [])),
                "after_latency_expected": sum(x.get("keys_left_expected", 0) for x in r.get("latency", [])),
                "background_keys_lost": r.get("background_keys_lost"),
            }
            for r in main + memory + scale
            if "keys_left" in r
        ],
        "workload": {
            "quick": quick,
            "events": profile.events,
            "warmup_events": profile.warmup,
            "warmup": "main points of wasm and native drain warmup_events more first; their rate window opens at that ack",
            "rates": profile.rates,
            "rate_secs": profile.rate_secs,
            "cap_secs": profile.cap_secs,
            "scale_events": profile.scale_events,
            "scale_rate": profile.scale_rate,
            "scale_graph": "memory",
            "ratios": "events_per_s of wasm divided by that of the other variant",
            "keyspace": "background keys context:bg<i>:part; each event's story adds 1 to 3 keys on top",
            "valkey_appendfsync": fsync,
        },
        "sandbox_overhead": overhead,
        "points": main + memory + scale,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.time() - started, 1),
    }


def fmt(value, digits: int | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits is not None:
        return f"{value:,.{digits}f}"
    if isinstance(value, (int, float)):
        return f"{value:,}"
    return str(value)


def markdown(results: dict) -> str:
    out = ["# End-to-end benchmark results", "", f"Machine: {results['machine']}", ""]
    out += [f"Started {results['started_at']}, took {results['duration_s']} s"
            + (" (quick)" if results["workload"]["quick"] else "")
            + f"; Valkey appendfsync {results['workload']['valkey_appendfsync']}.", ""]

    def rows_table(rows: list[dict]) -> list[str]:
        lines = [
            "| variant | events/s | p50 ms | p99 ms | p99.9 ms | CPU s / 10k events | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            notes = [r[k] for k in ("skipped", "error") if k in r]
            if r.get("capped"):
                notes.append("drain hit the time cap")
            if r.get("latency_saturated"):
                notes.append("not keeping up at 1,000/s: latencies are lower bounds")
            elif r.get("latency_behind"):
                notes.append("fell behind at 1,000/s")
            name = r["variant"] + (f" ({'; '.join(notes)})" if notes else "")
            lines.append(
                f"| {name} | {fmt(r['events_per_s'])} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
                f"{fmt(r['p999_ms'])} | {fmt(r['cpu_s_per_10k'])} | {fmt(r['rss_mib'])} |"
            )
        return lines

    out += [f"## Main rows ({results['note']})", ""] + rows_table(results["rows"]) + [""]
    out += ["Latency percentiles are from the 1,000 events/s run. "
            f"wasm and native drain {results['workload']['warmup_events']:,} events first; their rate "
            "counts from that ack on (start-up and the first Neo4j queries left out).", ""]
    alone = results.get("neo4j_alone")
    if alone:
        out += [f"Neo4j alone, before the first variant (its warm-up: {alone['transactions']:,} single-row "
                f"`MERGE` transactions at {alone['rate']}/s through the official Python driver, the second half "
                f"measured): commit p50 {fmt(alone['p50_ms'])} ms, p99 {fmt(alone['p99_ms'])} ms, "
                f"p99.9 {fmt(alone['p999_ms'])} ms. A variant's publish-to-ack latency with the Neo4j graph "
                "includes one such commit.", ""]
    r = results["ratios"]
    out += [
        "| ratio (events/s) | value |",
        "|---|---:|",
        f"| wasm / native | {fmt(r['wasm_vs_native'])} |",
        f"| wasm / python-seed | {fmt(r['wasm_vs_python_seed'])} |",
        f"| wasm / python-tuned | {fmt(r['wasm_vs_python_tuned'])} |",
        f"| sandbox overhead per event (criterion `overhead`), µs | {fmt(results['sandbox_overhead_us'])} |",
        "",
    ]
    if results["memory_graph"]:
        out += ["## Cache only (graph `memory://`, Python without Neo4j)", ""]
        out += rows_table(results["memory_graph"]) + [""]
    if results["latency"]:
        out += ["## Latency at fixed publish rates", "",
                "| variant | graph | rate /s | achieved /s | p50 ms | p99 ms | p99.9 ms | p99 to stored | p99 stored to ack | note |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for x in results["latency"]:
            note = x.get("skipped") or (
                "saturated: lower bounds" if x.get("saturated")
                else "behind: the backlog grew during the run" if x.get("behind") else ""
            )
            out.append(
                f"| {x['variant']} | {x['graph']} | {fmt(x['rate'])} | {fmt(x.get('achieved_rate'))} | "
                f"{fmt(x.get('p50_ms'))} | {fmt(x.get('p99_ms'))} | {fmt(x.get('p999_ms'))} | "
                f"{fmt(x.get('publish_to_stored_ms', {}).get('p99'))} | {fmt(x.get('stored_to_ack_ms', {}).get('p99'))} | {note} |"
            )
        out.append("")
    if results["scale"]:
        w = results["workload"]
        out += [
            "## Scale: per-event SCAN vs delete-matching",
            "",
            f"{w['scale_events']:,} events of backlog per point, graph `memory://`; "
            f"p99 at {w['scale_rate']} events/s.",
            "",
            "| variant | keyspace | events/s | p99 ms | note |",
            "|---|---:|---:|---:|---|",
        ]
        for x in results["scale"]:
            notes = [x[k] for k in ("skipped", "error") if k in x]
            if x.get("capped"):
                notes.append("drain hit the time cap")
            if x.get("p99_saturated"):
                notes.append("not keeping up: p99 is a lower bound")
            note = "; ".join(notes)
            out.append(
                f"| {x['variant']} | {fmt(x['keyspace'])} | {fmt(x['events_per_s'])} | {fmt(x['p99_ms'])} | {note} |"
            )
        out.append("")
    shared = [x for x in results["points"] if x.get("shared_work")]
    if shared:
        out += [
            "## Shared work (the host's own counters over each point)",
            "",
            "Invalidations served per sweep of the keyspace, and upserts per graph write transaction,",
            "over the whole point (drain and rate runs).",
            "",
            "| variant | graph | keyspace | calls per sweep | sweeps | rows per transaction | transactions |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for x in shared:
            w = x["shared_work"]
            out.append(
                f"| {x['variant']} | {x['graph']} | {fmt(x['keyspace'])} | {fmt(w.get('calls_per_sweep'))} | "
                f"{fmt(w.get('cache_sweeps'))} | {fmt(w.get('rows_per_transaction'))} | {fmt(w.get('graph_transactions'))} |"
            )
        out.append("")
    if results["keys_left"]:
        out += [
            "## Correctness: story keys left",
            "",
            "Expected: the keys of the stories whose events were not acked in time (a capped drain, a saturated rate).",
            "More keys left than expected is an event acked without its invalidation; fewer, events that",
            "invalidated but were not acked (still running at the cap, or failed and retried).",
            "",
            "| variant | graph | keyspace | after drain | expected | after latency runs | expected | background keys lost |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for x in results["keys_left"]:
            out.append(
                f"| {x['variant']} | {x['graph']} | {fmt(x['keyspace'])} | {fmt(x['after_drain'])} | "
                f"{fmt(x['after_drain_expected'])} | {fmt(x['after_latency'])} | {fmt(x['after_latency_expected'])} | "
                f"{fmt(x['background_keys_lost'])} |"
            )
        out.append("")
    return "\n".join(out)


# --- main -----------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    profile = Profile.of(args.quick)
    if args.keyspaces:
        profile.keyspaces = [int(k) for k in args.keyspaces.split(",")]
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench."))
    services = Services(args.nats_url, args.redis_url, args.neo4j_url, args.python, work)
    run = Run(services, profile)
    await run.connect()
    # scripts/services runs Valkey with appendfsync always (for the fault
    # tests); a benchmark of consumers wants Valkey's usual everysec, so
    # that it does not measure one disk flush per DEL.
    previous_fsync = str(run.cache.config_get("appendfsync").get("appendfsync", ""))
    fsync = previous_fsync if args.valkey_appendfsync == "keep" else args.valkey_appendfsync
    if fsync != previous_fsync:
        run.cache.config_set("appendfsync", fsync)
        log(f"Valkey appendfsync {previous_fsync} -> {fsync} while the benchmark runs")
    wanted = set(args.variants.split(",")) if args.variants else None

    def want(variant: str) -> bool:
        return wanted is None or variant in wanted

    main, memory, scale = [], [], []
    neo4j_alone = None
    try:
        if profile.neo4j_warmup_secs:
            log(f"==> Neo4j warm-up: single-row MERGE transactions for {profile.neo4j_warmup_secs:g} s")
            neo4j_alone = await asyncio.to_thread(warm_neo4j, services.neo4j_url, profile.neo4j_warmup_secs)
            log(
                f"  Neo4j alone: {neo4j_alone['transactions']} transactions; commit p50 {neo4j_alone['p50_ms']} ms, "
                f"p99 {neo4j_alone['p99_ms']} ms, p99.9 {neo4j_alone['p999_ms']} ms (second half)"
            )
        log(f"==> main rows: {profile.main_keyspace:,} keys, {profile.events:,} events, Neo4j graph")
        for variant in MAIN_VARIANTS:
            if want(variant):
                point = run.point(
                    variant, profile.main_keyspace, "neo4j", profile.events, profile.rates, profile.warmup
                )
                main.append(await run.measure(point))
        if profile.memory_graph:
            log("==> cache only: memory:// graph")
            for variant in MAIN_VARIANTS:
                if want(variant):
                    point = run.point(
                        variant, profile.main_keyspace, "memory", profile.events,
                        profile.memory_graph_rates, profile.warmup,
                    )
                    memory.append(await run.measure(point))
        log("==> scale curve: memory:// graph")
        for keyspace in profile.keyspaces:
            for variant in SCALE_VARIANTS:
                if want(variant):
                    point = run.point(variant, keyspace, "memory", profile.scale_events, [profile.scale_rate])
                    scale.append(await run.measure(point))
    finally:
        await run.close()
        run.cache.flushdb()
        if fsync != previous_fsync:
            run.cache.config_set("appendfsync", previous_fsync)
            log(f"Valkey appendfsync back to {previous_fsync}")

    results = assemble(profile, args.quick, main, memory, scale, started, fsync)
    if neo4j_alone:
        results["neo4j_alone"] = neo4j_alone
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
    failed = any("error" in r for r in main + memory + scale)
    if args.keep_logs or failed:
        log(f"wrote {out / 'latest.json'} and {out / 'latest.md'}; the variants' logs are in {work}")
    else:
        log(f"wrote {out / 'latest.json'} and {out / 'latest.md'}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under 3 minutes)")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="the benchmark flushes this database: its own, not the tests' (default db 14)",
    )
    parser.add_argument("--neo4j-url", default="bolt://127.0.0.1:7687")
    parser.add_argument(
        "--valkey-appendfsync",
        choices=["everysec", "always", "no", "keep"],
        default="everysec",
        help="Valkey's appendfsync while the benchmark runs, restored afterwards (default everysec)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for consumer.py")
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    parser.add_argument("--variants", help="comma-separated subset, e.g. wasm,python-seed")
    parser.add_argument("--keyspaces", help="comma-separated scale-curve keyspaces, e.g. 1000,1000000")
    parser.add_argument("--keep-logs", action="store_true", help="keep the variants' logs")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
