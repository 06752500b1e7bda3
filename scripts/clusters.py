#!/usr/bin/env python3
"""Cluster checks for scripts/clusters; the standard library only.

    clusters.py nats-wait SECS NAME=MONITOR_URL...
        wait until every named NATS server answers /healthz, all agree on one
        JetStream meta leader, the leader sees each of them as current, and
        so does the leader of every stream and consumer they host.
    clusters.py valkey-form PORT:BUS...
        give each fresh node its share of the 16384 slots (in the order given)
        and a distinct config epoch, then introduce them with CLUSTER MEET.
        Nodes already in a cluster are left alone.
    clusters.py valkey-wait SECS PORT...
        wait until every node reports cluster_state:ok, all 16384 slots
        assigned and ok, and knows as many nodes as were given.
    clusters.py valkey-call PORT ARG...
        send one command, print the reply.

On timeout the last reason is printed to stderr and the exit status is 1.
"""

import json
import socket
import sys
import time
import urllib.error
import urllib.request

SLOTS = 16384


# --- NATS ---------------------------------------------------------------------


def http_json(url):
    """(status, parsed body or None) for a GET; status 0 when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"null")
        except ValueError:
            return err.code, None
    except (OSError, ValueError):
        return 0, None


def nats_not_ready(nodes):
    """None when the cluster is ready, else why not."""
    leaders = set()
    for name, url in nodes:
        status, body = http_json(url + "/healthz")
        if status != 200:
            return f"{name}: /healthz {status or 'unreachable'}: {body}"
        status, body = http_json(url + "/jsz")
        meta = (body or {}).get("meta_cluster") or {}
        if status != 200 or not meta.get("leader"):
            return f"{name}: no JetStream meta leader yet"
        leaders.add(meta["leader"])
    if len(leaders) != 1:
        return f"the servers name different meta leaders: {sorted(leaders)}"
    leader = leaders.pop()
    url = dict(nodes).get(leader)
    if url is None:
        return f"the meta leader {leader} is not one of {[n for n, _ in nodes]}"
    _, body = http_json(url + "/jsz")
    meta = (body or {}).get("meta_cluster") or {}
    if meta.get("leader") != leader:
        return f"{leader}: no longer the meta leader"
    if meta.get("cluster_size", 0) < len(nodes):
        return f"{leader}: meta group has {meta.get('cluster_size')} peers, expected {len(nodes)}"
    lagging = not_current(meta, leader, nodes)
    if lagging:
        return f"{leader} (meta leader): not current yet: {', '.join(lagging)}"
    # Every stream and consumer: a leader, which sees the other replicas among
    # these servers as current (a restarted server has caught up). With a
    # server down, a group may have lost its quorum: only the whole cluster
    # must have a leader for each.
    whole = len(nodes) >= meta.get("cluster_size", 0)
    names = {n for n, _ in nodes}
    for name, url in nodes:
        _, body = http_json(url + "/jsz?streams=true&consumers=true")
        for account in (body or {}).get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                groups = [(f"stream {stream.get('name')}", stream.get("cluster"))]
                groups += [(f"consumer {stream.get('name')}/{c.get('name')}", c.get("cluster"))
                           for c in stream.get("consumer_detail") or []]
                for what, cluster in groups:
                    if not cluster:
                        continue
                    if not cluster.get("leader"):
                        if whole:
                            return f"{name}: {what} has no leader"
                        continue
                    if cluster["leader"] == name:
                        lagging = [r.get("name") for r in cluster.get("replicas") or []
                                   if r.get("name") in names and not r.get("current")]
                        if lagging:
                            return f"{name}: {what}: replicas not current yet: {', '.join(lagging)}"
    return None


def not_current(meta, leader, nodes):
    """The servers among nodes (other than leader) that the meta leader does
    not list as current."""
    current = {r.get("name") for r in meta.get("replicas") or [] if r.get("current")}
    return [n for n, _ in nodes if n != leader and n not in current]


# --- Valkey -------------------------------------------------------------------


class RespError(Exception):
    pass


def resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line!r}")


def valkey(port, *args):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as sock:
        sock.sendall(resp_encode(args))
        return resp_read(sock.makefile("rb"))


def cluster_info(port):
    info = {}
    for line in valkey(port, "CLUSTER", "INFO").splitlines():
        key, _, value = line.partition(":")
        info[key] = value.strip()
    return info


def is_fresh(info):
    return info.get("cluster_known_nodes") == "1" and info.get("cluster_slots_assigned") == "0"


def valkey_form(nodes):
    ports = [n.split(":") for n in nodes]
    infos = [cluster_info(port) for port, _ in ports]
    fresh = [is_fresh(info) for info in infos]
    if not any(fresh):
        return 0
    if not all(fresh):
        lost = [p for (p, _), f in zip(ports, fresh) if f]
        sys.stderr.write(
            f"valkey on port(s) {', '.join(lost)}: no cluster state, while the others "
            "have theirs; `scripts/clusters down valkey` starts afresh\n")
        return 1
    for i, (port, _) in enumerate(ports):
        lo = round(i * SLOTS / len(ports))
        hi = round((i + 1) * SLOTS / len(ports)) - 1
        valkey(port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        valkey(port, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
    first = ports[0][0]
    for port, bus in ports[1:]:
        valkey(first, "CLUSTER", "MEET", "127.0.0.1", port, bus)
    return 0


def valkey_not_ready(ports):
    for port in ports:
        try:
            info = cluster_info(port)
        except (OSError, RespError) as err:
            return f"port {port}: {err}"
        want = {"cluster_state": "ok", "cluster_slots_assigned": str(SLOTS),
                "cluster_slots_ok": str(SLOTS), "cluster_known_nodes": str(len(ports))}
        wrong = [f"{k}:{info.get(k)}" for k, v in want.items() if info.get(k) != v]
        if wrong:
            return f"port {port}: {' '.join(wrong)}"
    return None


# --- main ---------------------------------------------------------------------


def wait(secs, check):
    deadline = time.monotonic() + secs
    while True:
        reason = check()
        if reason is None:
            return 0
        if time.monotonic() >= deadline:
            sys.stderr.write(f"after {secs:g}s: {reason}\n")
            return 1
        time.sleep(0.1)


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "nats-wait":
        nodes = [tuple(a.split("=", 1)) for a in args[1:]]
        return wait(float(args[0]), lambda: nats_not_ready(nodes))
    if cmd == "valkey-form":
        return valkey_form(args)
    if cmd == "valkey-wait":
        return wait(float(args[0]), lambda: valkey_not_ready(args[1:]))
    if cmd == "valkey-call":
        try:
            reply = valkey(args[0], *args[1:])
        except RespError as err:
            print(f"(error) {err}")
            return 1
        print(reply if not isinstance(reply, list) else json.dumps(reply, indent=1))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, RespError) as err:
        sys.stderr.write(f"clusters.py {' '.join(sys.argv[1:2])}: {err}\n")
        sys.exit(1)
