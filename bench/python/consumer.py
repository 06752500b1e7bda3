"""The original Python planning consumer, reproduced for the benchmark.

This is the design Switchyard replaced (``../shared/origin``): a nats-py
JetStream pull consumer that, per ``story.transitioned`` event, invalidates
the story's cached context in Valkey with the synchronous redis-py client
(SCAN + DEL, each call pushed to a thread with ``asyncio.to_thread``),
records a ``PhaseTransition`` node in Neo4j with the official driver, and
acks. Only the key pattern is corrected, so that it does the same work as
the Switchyard handler: it scans ``context:<story_id>:*`` and deletes what
it finds plus the bare key ``context:<story_id>``.

Its error handling is the original's, on purpose: a cache or graph error is
logged and the message acked anyway; an unreadable payload is nak'ed with
no delay.

Modes:

- ``seed``: ``fetch(batch=1)``, one message at a time, as in the original.
- ``tuned``: ``fetch(batch=64)`` and the messages of a batch handled
  concurrently with ``asyncio.gather``, each acked on its own.

``--neo4j-url none`` skips the graph (Switchyard's ``memory://`` graph).
Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

import nats
import nats.errors
import redis
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

logger = logging.getLogger("planning_consumer")

SCAN_COUNT = 100
TUNED_BATCH = 64
NODE_LABEL = "PhaseTransition"
UPSERT = f"MERGE (n:{NODE_LABEL} {{id: $id}}) SET n += $props"


class Graph:
    """The graph adapter: one auto-commit MERGE per upsert."""

    def __init__(self, url: str) -> None:
        import neo4j

        self.driver = neo4j.GraphDatabase.driver(url, auth=None)
        self.driver.verify_connectivity()
        try:
            # The same uniqueness constraint the Switchyard host creates on
            # its first write to a label, so MERGE finds nodes by index.
            with self.driver.session() as session:
                session.run(
                    f"CREATE CONSTRAINT IF NOT EXISTS FOR (n:{NODE_LABEL}) "
                    "REQUIRE n.id IS UNIQUE"
                ).consume()
        except Exception as e:  # an equivalent constraint under another name
            logger.info(f"constraint not created: {e}")

    def upsert_entity(self, label: str, id: str, properties: dict) -> None:
        with self.driver.session() as session:
            session.run(
                f"MERGE (n:{label} {{id: $id}}) SET n += $props",
                id=id,
                props=properties,
            ).consume()

    def close(self) -> None:
        self.driver.close()


class PlanningEventsConsumer:
    def __init__(self, cache: redis.Redis, graph: Graph | None) -> None:
        self.cache = cache
        self.graph = graph

    async def _handle_story_transitioned(self, msg) -> None:
        """Handle story phase transition events."""
        try:
            event = json.loads(msg.data.decode())
            story_id = event.get("story_id")
            from_phase = event.get("from_phase")
            to_phase = event.get("to_phase")
            timestamp = event.get("timestamp")

            logger.info(f"Story transition: {story_id} from {from_phase} to {to_phase}")

            # Invalidate context cache for this story
            if self.cache:
                try:
                    pattern = f"context:{story_id}:*"
                    cursor = 0
                    deleted_count = await asyncio.to_thread(
                        self.cache.delete, f"context:{story_id}"
                    )
                    while True:
                        cursor, keys = await asyncio.to_thread(
                            self.cache.scan,
                            cursor=cursor,
                            match=pattern,
                            count=SCAN_COUNT,
                        )
                        if keys:
                            deleted = await asyncio.to_thread(self.cache.delete, *keys)
                            deleted_count += deleted
                        if cursor == 0:
                            break

                    logger.info(
                        f"Invalidated {deleted_count} context cache entries for {story_id} "
                        f"(phase: {to_phase})"
                    )
                except Exception as e:
                    logger.warning(f"Failed to invalidate cache: {e}")

            # Record phase transition in graph for history
            if self.graph:
                try:
                    await asyncio.to_thread(
                        self.graph.upsert_entity,
                        label=NODE_LABEL,
                        id=f"{story_id}:{timestamp}",
                        properties={
                            "story_id": story_id,
                            "from_phase": from_phase,
                            "to_phase": to_phase,
                            "timestamp": timestamp,
                        },
                    )
                    logger.info(
                        f"PhaseTransition recorded in Neo4j: {story_id} {from_phase}->{to_phase}"
                    )
                except Exception as e:
                    logger.error(f"Failed to record transition in graph: {e}", exc_info=True)

            # Acknowledge message
            await msg.ack()
            logger.debug(f"Processed story transition for {story_id}")

        except Exception as e:
            logger.error(f"Error handling story transition: {e}", exc_info=True)
            # Negative acknowledge to retry
            await msg.nak()


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    cache = redis.Redis.from_url(args.redis_url)
    cache.ping()
    graph = None if args.neo4j_url == "none" else Graph(args.neo4j_url)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    psub = await js.pull_subscribe(
        args.subject,
        durable=args.durable,
        stream=args.stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
        ),
    )
    consumer = PlanningEventsConsumer(cache, graph)
    batch = 1 if args.mode == "seed" else TUNED_BATCH
    logger.info(
        f"consuming {args.subject} from {args.stream} as {args.durable} "
        f"(mode {args.mode}, batch {batch})"
    )

    while not stop.is_set():
        try:
            msgs = await psub.fetch(batch=batch, timeout=1)
        except nats.errors.TimeoutError:
            continue
        if args.mode == "seed":
            for msg in msgs:
                await consumer._handle_story_transitioned(msg)
        else:
            await asyncio.gather(*(consumer._handle_story_transitioned(m) for m in msgs))

    logger.info("stopping")
    await nc.drain()
    if graph:
        graph.close()
    cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["seed", "tuned"], required=True)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="PLANNING_EVENTS")
    parser.add_argument("--durable", default="context-planning-story-transitions")
    parser.add_argument("--subject", default="planning.story.transitioned")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--neo4j-url", default="bolt://127.0.0.1:7687", help="bolt://host:port, or none"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
