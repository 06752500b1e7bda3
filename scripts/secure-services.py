"""Helper of scripts/secure-services; run it through that script, not directly.

Runs in the venv .services/secure/tools/venv (nkeys, nats-py, redis, neo4j).

  nkey-seed KIND FILE      write a new NKey seed (KIND: user) to FILE, mode 0600
  nkey-public SEED_FILE    print the public key of the seed in SEED_FILE
  jwt DIR CREDS            issue operator, system account, account (JetStream
                           enabled) and user JWTs into DIR, the user's creds to
                           CREDS, and DIR/resolver.conf (system_account and the
                           MEMORY resolver's preload) for nats-server
  check                    smoke test of every server, configured by the
                           SWITCHYARD_SECURE_* variables of `secure-services env`
"""

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import ssl
import sys
import time

import nkeys

# --- NKeys and JWTs -----------------------------------------------------------

PREFIXES = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def new_seed(kind):
    return nkeys.encode_seed(os.urandom(32), PREFIXES[kind]).decode()


def keypair(seed):
    return nkeys.from_seed(seed.encode())


def public_key(seed):
    return keypair(seed).public_key.decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def encode_jwt(subject, name, issuer_seed, nats_claim):
    """A JWT v2 as the nats-io/jwt library writes it: jti is the base32 hash
    (SHA-512/256) of the standard claims without jti, in Go field order."""
    issuer = keypair(issuer_seed)
    claims = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
    }
    try:
        digest = hashlib.new("sha512_256", compact(claims).encode()).digest()
    except ValueError:  # an OpenSSL without SHA-512/256; the server ignores jti
        digest = hashlib.sha256(compact(claims).encode()).digest()
    claims = {"jti": base64.b32encode(digest).decode().rstrip("="), **claims}
    claims["nats"] = nats_claim
    header = b64url(compact({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = b64url(compact(claims).encode())
    signature = b64url(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


UNLIMITED = {
    "subs": -1, "data": -1, "payload": -1,
    "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
}
JETSTREAM_UNLIMITED = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def account_claim(jetstream):
    limits = dict(UNLIMITED, **(JETSTREAM_UNLIMITED if jetstream else {}))
    return {
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    }


def user_claim():
    return {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}


def creds(user_jwt, user_seed):
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def issue_jwts(out_dir, creds_path):
    os.makedirs(out_dir, exist_ok=True)
    seeds = {name: new_seed(kind) for name, kind in [
        ("operator", "operator"), ("system", "account"), ("account", "account"), ("user", "user"),
        ("stranger-account", "account"), ("stranger-user", "user"),
    ]}
    pub = {name: public_key(seed) for name, seed in seeds.items()}
    operator_jwt = encode_jwt(pub["operator"], "switchyard-test-operator", seeds["operator"],
                              {"system_account": pub["system"], "type": "operator", "version": 2})
    system_jwt = encode_jwt(pub["system"], "SYS", seeds["operator"], account_claim(jetstream=False))
    account_jwt = encode_jwt(pub["account"], "switchyard", seeds["operator"], account_claim(jetstream=True))
    user_jwt = encode_jwt(pub["user"], "switchyard", seeds["account"], user_claim())
    # A user of an account that the server has no JWT for (its operator never
    # signed one): refused.
    stranger_user_jwt = encode_jwt(pub["stranger-user"], "stranger", seeds["stranger-account"], user_claim())

    for name, seed in seeds.items():
        write_private(os.path.join(out_dir, f"{name}.nk"), seed + "\n")
    for name, token in [("operator", operator_jwt), ("system", system_jwt), ("account", account_jwt),
                        ("user", user_jwt)]:
        write_private(os.path.join(out_dir, f"{name}.jwt"), token + "\n")
    write_private(os.path.join(out_dir, "resolver.conf"),
                  f"system_account: {pub['system']}\n"
                  "resolver: MEMORY\n"
                  "resolver_preload: {\n"
                  f"  {pub['system']}: \"{system_jwt}\"\n"
                  f"  {pub['account']}: \"{account_jwt}\"\n"
                  "}\n")
    write_private(os.path.join(out_dir, "stranger.creds"), creds(stranger_user_jwt, seeds["stranger-user"]))
    write_private(creds_path, creds(user_jwt, seeds["user"]))


# --- check --------------------------------------------------------------------

E = os.environ.get


def secret(var):
    with open(E(var)) as f:
        return f.read().strip()


def tls_context(ca=None, client=False):
    ctx = ssl.create_default_context(cafile=ca or E("SWITCHYARD_SECURE_CA"))
    if client:
        ctx.load_cert_chain(E("SWITCHYARD_SECURE_CLIENT_CERT"), E("SWITCHYARD_SECURE_CLIENT_KEY"))
    return ctx


def host_port(url):
    m = re.match(r"^[a-z+]+://([^:/]+):(\d+)", url)
    return m.group(1), int(m.group(2))


def describe(exc):
    """The exception and its causes, one line."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip() or type(exc).__name__
        parts.append(f"{type(exc).__name__}: {text}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts).replace("\n", " ")


# What a refusal must say, by reason.
AUTH = r"authori[sz]ation|WRONGPASS|NOAUTH|invalid username|unauthori[sz]ed|authentication"
CERT = r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"
PLAIN = r"plain text refused"
CLIENT_CERT = r"certificate required|handshake failure|alert|reset|broken pipe|connection lost|EOF|closed|timeout"
NO_TLS_FIRST = r"timeout|timed out|closed|reset|EOF|handshake|empty response from server when expecting INFO"


async def nats_case(url, ctx, **kw):
    import nats

    errors = []

    async def on_error(e):
        errors.append(e)

    nc = await asyncio.wait_for(nats.connect(
        url, tls=ctx, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
        error_cb=on_error, **kw), 15)
    try:
        js = nc.jetstream()
        stream = "SECURE_CHECK"
        await js.add_stream(name=stream, subjects=["secure.check.>"], storage="memory")
        ack = await js.publish("secure.check.one", b"hello", timeout=5)
        await js.delete_stream(stream)
        return f"jetstream: stream {ack.stream} seq {ack.seq}"
    finally:
        await nc.close()


def raw_plain(port, nats_like):
    """Connect without TLS and speak the plain protocol: refused unless the
    server answers in its protocol (NATS: PONG/+OK; Redis: any RESP reply)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        s.settimeout(3)
        if nats_like == "nats":
            first = s.recv(4096)  # INFO ... (plain even when TLS is required)
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false}\r\nPING\r\n')
        elif nats_like == "nats-tls-first":
            first = b""
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false}\r\nPING\r\n')
        else:
            first = b""
            s.sendall(b"PING\r\n")
        reply = b""
        try:
            while len(reply) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
                if b"\r\n" in reply:
                    break
        except (socket.timeout, ConnectionResetError) as e:
            reply += f"<{type(e).__name__}>".encode()
    finally:
        s.close()
    text = reply.decode("latin-1")
    if nats_like.startswith("nats"):
        if "PONG" in text or text.startswith("+OK"):
            raise AssertionError(f"plain text accepted: {text.strip()[:60]}")
    elif text[:1] in ("+", "-", ":", "$", "*", "%", "_"):
        raise AssertionError(f"plain text accepted: {text.strip()[:60]}")
    info = "server sent INFO, then " if first.startswith(b"INFO") else ""
    raise ConnectionError(f"plain text refused: {info}{text.strip()[:60] or 'closed'}")


def redis_case(url, ca=None, client=False, user="switchyard", password=None, protocol=3):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host, port = host_port(url)
    kw = dict(retry=Retry(NoBackoff(), 0), ssl=True, ssl_ca_certs=ca or E("SWITCHYARD_SECURE_CA"), ssl_check_hostname=True,
              ssl_cert_reqs="required", socket_timeout=5, socket_connect_timeout=5,
              username=user, password=password, protocol=protocol)
    if client:
        kw.update(ssl_certfile=E("SWITCHYARD_SECURE_CLIENT_CERT"), ssl_keyfile=E("SWITCHYARD_SECURE_CLIENT_KEY"))
    r = redis.Redis(host=host, port=port, **kw)
    try:
        value = f"v{time.time_ns()}"
        r.set("secure:check", value)
        got = r.get("secure:check").decode()
        assert got == value, f"GET returned {got!r}"
        r.delete("secure:check")
        return "SET/GET ok"
    finally:
        r.close()


def neo4j_case(url, password, ctx=None, encrypted=True):
    import neo4j

    # bolt+s:// would trust only the system CAs; our CA goes in an ssl_context,
    # which the driver takes with the bolt:// scheme.
    host, port = host_port(url)
    kw = dict(auth=("neo4j", password), connection_timeout=5, max_connection_lifetime=30,
              max_transaction_retry_time=0)
    if encrypted:
        kw["ssl_context"] = ctx or tls_context()
    else:
        kw["encrypted"] = False
    with neo4j.GraphDatabase.driver(f"bolt://{host}:{port}", **kw) as driver:
        # A session's run is not retried (execute_query retries for 30 s).
        with driver.session() as session:
            n = session.run("RETURN 1 AS n").single()["n"]
        assert n == 1
        return "RETURN 1 ok"


def run_check():
    import logging

    # asyncio's "eof_received" notes on TLS closes and the drivers' retry
    # warnings would interleave with the table.
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("asyncio", "neo4j", "nats"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    nats_pw = secret("SWITCHYARD_SECURE_NATS_PASSWORD_FILE")
    token = secret("SWITCHYARD_SECURE_NATS_TOKEN_FILE")
    redis_pw = secret("SWITCHYARD_SECURE_REDIS_PASSWORD_FILE")
    neo4j_pw = secret("SWITCHYARD_SECURE_NEO4J_PASSWORD_FILE")
    user = E("SWITCHYARD_SECURE_NATS_USER")
    url = lambda name: E(f"SWITCHYARD_SECURE_{name}_URL")  # noqa: E731
    port = lambda name: int(E(f"SWITCHYARD_SECURE_{name}_PORT"))  # noqa: E731
    untrusted_ca = E("SWITCHYARD_SECURE_UNTRUSTED_CA")
    jwt_dir = E("SWITCHYARD_SECURE_JWT_DIR")
    n = lambda u, ctx, **kw: lambda: asyncio.run(nats_case(u, ctx, **kw))  # noqa: E731

    # (server, case, expected "ok" or a regex the refusal must match, thunk)
    cases = [
        ("nats-users", "user/password", "ok", n(url("NATS_USERS"), tls_context(), user=user, password=nats_pw)),
        ("nats-users", "nkey seed (user.nk)", "ok",
         n(url("NATS_USERS"), tls_context(), nkeys_seed=E("SWITCHYARD_SECURE_NATS_NKEY_SEED_FILE"))),
        ("nats-users", "wrong password", AUTH, n(url("NATS_USERS"), tls_context(), user=user, password="wrong-pw")),
        ("nats-users", "no credentials", AUTH, n(url("NATS_USERS"), tls_context())),
        ("nats-users", "plain text", PLAIN, lambda: raw_plain(port("NATS_USERS"), "nats")),
        ("nats-mtls", "client cert + password", "ok",
         n(url("NATS_MTLS"), tls_context(client=True), user=user, password=nats_pw)),
        ("nats-mtls", "no client cert", CLIENT_CERT, n(url("NATS_MTLS"), tls_context(), user=user, password=nats_pw)),
        ("nats-mtls", "client cert, wrong password", AUTH,
         n(url("NATS_MTLS"), tls_context(client=True), user=user, password="wrong-pw")),
        ("nats-mtls", "plain text", PLAIN, lambda: raw_plain(port("NATS_MTLS"), "nats")),
        ("nats-tls-first", "handshake first + password", "ok",
         n(url("NATS_TLS_FIRST"), tls_context(), tls_handshake_first=True, user=user, password=nats_pw)),
        ("nats-tls-first", "TLS after INFO (no handshake first)", NO_TLS_FIRST,
         n(url("NATS_TLS_FIRST"), tls_context(), user=user, password=nats_pw)),
        ("nats-tls-first", "wrong password", AUTH,
         n(url("NATS_TLS_FIRST"), tls_context(), tls_handshake_first=True, user=user, password="wrong-pw")),
        ("nats-tls-first", "plain text", PLAIN, lambda: raw_plain(port("NATS_TLS_FIRST"), "nats-tls-first")),
        ("nats-token", "token", "ok", n(url("NATS_TOKEN"), tls_context(), token=token)),
        ("nats-token", "wrong token", AUTH, n(url("NATS_TOKEN"), tls_context(), token="wrong-token")),
        ("nats-token", "plain text", PLAIN, lambda: raw_plain(port("NATS_TOKEN"), "nats")),
        ("nats-jwt", "creds file (user.creds)", "ok",
         n(url("NATS_JWT"), tls_context(), user_credentials=E("SWITCHYARD_SECURE_NATS_CREDS_FILE"))),
        ("nats-jwt", "creds of an unknown account", AUTH,
         n(url("NATS_JWT"), tls_context(), user_credentials=os.path.join(jwt_dir, "stranger.creds"))),
        ("nats-jwt", "user/password", AUTH, n(url("NATS_JWT"), tls_context(), user=user, password=nats_pw)),
        ("nats-jwt", "plain text", PLAIN, lambda: raw_plain(port("NATS_JWT"), "nats")),
        ("nats-untrusted", "client trusting our CA", CERT,
         n(url("NATS_UNTRUSTED"), tls_context(), user=user, password=nats_pw)),
        ("nats-untrusted", "client trusting its CA (control)", "ok",
         n(url("NATS_UNTRUSTED"), tls_context(ca=untrusted_ca), user=user, password=nats_pw)),
        ("redis", "ACL user/password", "ok", lambda: redis_case(url("REDIS"), password=redis_pw)),
        ("redis", "ACL user/password + client cert", "ok",
         lambda: redis_case(url("REDIS"), client=True, password=redis_pw)),
        ("redis", "wrong password", AUTH, lambda: redis_case(url("REDIS"), password="wrong-pw")),
        ("redis", "default user, no password", AUTH, lambda: redis_case(url("REDIS"), user=None, protocol=2)),
        ("redis", "plain text", PLAIN, lambda: raw_plain(port("REDIS"), "redis")),
        ("redis-mtls", "client cert + password", "ok",
         lambda: redis_case(url("REDIS_MTLS"), client=True, password=redis_pw)),
        ("redis-mtls", "no client cert", CLIENT_CERT, lambda: redis_case(url("REDIS_MTLS"), password=redis_pw)),
        ("redis-mtls", "plain text", PLAIN, lambda: raw_plain(port("REDIS_MTLS"), "redis")),
        ("redis-untrusted", "client trusting our CA", CERT,
         lambda: redis_case(url("REDIS_UNTRUSTED"), password=redis_pw)),
        ("redis-untrusted", "client trusting its CA (control)", "ok",
         lambda: redis_case(url("REDIS_UNTRUSTED"), ca=untrusted_ca, password=redis_pw)),
        ("neo4j", "bolt TLS, localhost, password", "ok", lambda: neo4j_case(url("NEO4J"), neo4j_pw)),
        ("neo4j", "bolt TLS, 127.0.0.1, password", "ok",
         lambda: neo4j_case(f"bolt://127.0.0.1:{port('NEO4J')}", neo4j_pw)),
        ("neo4j", "wrong password", AUTH, lambda: neo4j_case(url("NEO4J"), "wrong-password")),
        ("neo4j", "plain bolt", r"closed|defunct|unavailable|reset|EOF|failed to read", lambda: neo4j_case(
            url("NEO4J"), neo4j_pw, encrypted=False)),
        ("neo4j", "untrusted TLS endpoint", CERT, lambda: neo4j_case(url("NEO4J_UNTRUSTED"), neo4j_pw)),
    ]

    rows, failures = [], 0
    for server, case, expect, thunk in cases:
        started = time.monotonic()
        try:
            detail = thunk()
            got = "ok"
            good = expect == "ok"
        except Exception as e:  # noqa: BLE001 - every failure is a result here
            detail = describe(e)
            got = "refused"
            good = expect != "ok" and re.search(expect, detail, re.IGNORECASE) is not None
        failures += not good
        rows.append((server, case, "ok" if expect == "ok" else "refused", got,
                     "pass" if good else "FAIL", f"{time.monotonic() - started:4.1f}s", detail))

    widths = [max(len(r[i]) for r in rows + [HEADER]) for i in range(6)]
    for row in [HEADER] + rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        detail = row[6] if len(row[6]) <= 110 or row[4] == "FAIL" else row[6][:107] + "..."
        print("  ".join(cells + [detail]).rstrip())
    passed = len(rows) - failures
    print(f"check: {passed} passed, {failures} failed")
    return 1 if failures else 0


HEADER = ("server", "case", "expect", "got", "result", "time", "detail")


def main(argv):
    if len(argv) >= 2 and argv[0] == "nkey-seed":
        write_private(argv[2], new_seed(argv[1]) + "\n")
    elif len(argv) == 2 and argv[0] == "nkey-public":
        with open(argv[1]) as f:
            print(public_key(f.read().strip()))
    elif len(argv) == 3 and argv[0] == "jwt":
        issue_jwts(argv[1], argv[2])
    elif argv == ["check"]:
        return run_check()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
