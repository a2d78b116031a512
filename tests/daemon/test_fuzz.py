"""Protocol fuzz: over 10,000 random and mutated messages while the daemon keeps serving.

Each message is sent on a real DEALER socket and its outcome is counted: a reply with `ok`, an
error reply of a given type, or (for oversize frames only) a dropped connection. Every message
that fits the size limit must get a reply, and the daemon must answer `status` at the end.

A second run sends what random content rarely reaches: nesting up to 10^5 deep (content, header
and parent header), NUL bytes and lone surrogates in every string field of every verb, integers
at 2**63 and beyond in every integer field, and thousand-frame messages; it counts the outcomes,
checks `status` after each batch and that every message got exactly one reply.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import protocol as proto
from daemon.connection import read_connection_file

# Each example draws one random content and four verbs and sends it under every mutation:
# 220 examples x 4 verbs x 12 mutations = 10,560 messages. (Drawing every message separately
# costs hypothesis about 10 ms each, which would make this a slow test.)
EXAMPLES = 220
VERBS_PER_EXAMPLE = 4
REPLY_TIMEOUT_MS = 5000
# Requests that are safe to fuzz with random content (no shutdown; job_submit/chat only ever
# get invalid content here, see VALID_CONTENT).
VERBS = ["hello", "status", "profile_list", "job_list", "job_get", "job_cancel", "job_logs",
         "snapshot", "sync_probe", "tokenize", "memory_search", "route", "chat_cancel",
         "job_submit", "chat", "nope", "event_burst"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)
contents = st.dictionaries(
    st.sampled_from(["id", "kind", "params", "prefix", "since", "text", "query", "k", "state",
                     "limit", "offset", "name", "token", "chat_id", "versions", "messages",
                     "prompt", "count", "size"]) | st.text(max_size=6),
    json_values, max_size=5)

MUTATIONS = ["valid", "bad_json", "wrong_header_types", "missing_frame", "extra_frame",
             "no_signature", "wrong_signature", "replay", "unknown_type", "not_an_object",
             "bad_version", "no_delimiter"]


def _safe(verb: str, content: dict) -> dict:
    """Keep random content from starting real work: no valid job kinds, no real chats."""
    if verb == "job_submit":
        content["kind"] = 17
    if verb == "chat":
        content["messages"] = "not a list"
    if verb == "event_burst":
        content["count"] = 0
    return content


def _mutate(session: proto.Session, mutation: str, verb: str, content: dict,
            sent: list[list[bytes]]) -> list[bytes]:
    header, frames = session.request(f"{verb}_request", _safe(verb, content))
    if mutation == "valid":
        return frames
    if mutation == "bad_json":
        body = [frames[2], frames[3], b"{not json"]
        return [proto.DELIMITER, session.sign(body), *body]
    if mutation == "not_an_object":
        body = [frames[2], frames[3], b"[1, 2]"]
        return [proto.DELIMITER, session.sign(body), *body]
    if mutation == "wrong_header_types":
        bad = dict(header, seq=str(header["seq"]), msg_type=["x"])
        body = [json.dumps(bad).encode(), frames[3], frames[4]]
        return [proto.DELIMITER, session.sign(body), *body]
    if mutation == "bad_version":
        bad = dict(header, version="9.1")
        return session.serialize(bad, content)
    if mutation == "missing_frame":
        return frames[:-1]
    if mutation == "extra_frame":
        return frames + [b"{}"]
    if mutation == "no_delimiter":
        return frames[1:]
    if mutation == "no_signature":
        return [frames[0], b"", *frames[2:]]
    if mutation == "wrong_signature":
        return [frames[0], proto.Session(b"another key").sign(frames[2:]), *frames[2:]]
    if mutation == "replay":
        return list(sent[-1]) if sent else frames
    if mutation == "unknown_type":
        return session.serialize(session.header("launch_rockets"), content)
    raise AssertionError(mutation)


def _send_and_classify(sock: zmq.Socket, frames: list[bytes], session: proto.Session) -> str:
    sock.send_multipart(frames)
    assert sock.poll(REPLY_TIMEOUT_MS), "no reply: the daemon stopped answering"
    reply = session.deserialize(sock.recv_multipart())
    if reply.content.get("status") == "ok":
        return "ok"
    return "error:" + reply.content["error"]["type"]


def _dealer() -> tuple[proto.Session, zmq.Context, zmq.Socket]:
    """A signing session and a raw DEALER socket on the running daemon's request endpoint."""
    info = read_connection_file()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(info.request)
    return proto.Session(info.key_bytes), ctx, sock


def test_fuzz_ten_thousand_messages(daemon):
    session, ctx, sock = _dealer()
    outcomes: Counter[str] = Counter()
    by_mutation: Counter[str] = Counter()
    sent: list[list[bytes]] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(contents, st.lists(st.sampled_from(VERBS), min_size=VERBS_PER_EXAMPLE,
                              max_size=VERBS_PER_EXAMPLE))
    def fuzz(content, verbs):
        for verb, mutation in ((v, m) for v in verbs for m in MUTATIONS):
            frames = _mutate(session, mutation, verb, dict(content), sent)
            outcome = _send_and_classify(sock, frames, session)
            outcomes[outcome] += 1
            by_mutation[mutation] += 1
            if mutation == "replay" and sent:
                assert outcome == "error:Replay"
            if mutation in ("no_signature", "wrong_signature"):
                assert outcome == "error:BadSignature"
            if mutation == "unknown_type":
                assert outcome == "error:UnknownType"
            if mutation == "valid":
                sent.append(frames)
                del sent[:-2]

    fuzz()

    # Oversize frames: ZMQ_MAXMSGSIZE makes the daemon drop that peer; no reply, no crash.
    dropped = 0
    for _ in range(20):
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(read_connection_file().request)
        _, frames = session.request("status_request", {"pad": "x" * (proto.MAX_FRAME_BYTES + 1)})
        big.send_multipart(frames)
        dropped += 0 if big.poll(300) else 1
        big.close(0)
    outcomes["dropped:oversize"] += dropped

    total = sum(outcomes.values())
    print(f"\nfuzz: {total} messages; outcomes:")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:32s} {count}")
    print("mutations:", dict(by_mutation))
    assert total >= 10_000
    assert dropped == 20
    assert set(by_mutation) == set(MUTATIONS)
    for kind in ("BadSignature", "BadFrames", "BadJSON", "BadHeader", "Replay", "UnknownType",
                 "VersionMismatch", "BadRequest"):
        assert outcomes[f"error:{kind}"] > 0, kind
    # Still serving, and it counted what it saw.
    _, frames = session.request("status_request", {})
    sock.send_multipart(frames)
    assert sock.poll(REPLY_TIMEOUT_MS)
    status = session.deserialize(sock.recv_multipart()).content
    assert status["status"] == "ok" and status["pid"] == daemon.pid
    assert daemon.proc.poll() is None
    ctx.destroy(linger=0)


# --- hostile values: depth, NUL and lone surrogates, 64-bit overflow, a thousand frames -------

HOSTILE_STRINGS = ["a\x00b", "\x00", "\ud800", "x\udfffy"]
HOSTILE_INTS = [2**63, 2**63 + 1, 2**64, -2**63 - 1, 10**100]
DEPTHS = [10, 63, 64, 65, 100, 1000, 10**4, 10**5]
# Verbs that do nothing but answer when their content is valid (for unknown deep fields).
HARMLESS = ["hello", "status", "profile_list", "job_list", "snapshot"]


def _filler(kinds) -> object:
    """A plausible value of a field's type, so parse reaches the hostile field."""
    kinds = kinds or (str,)
    for kind, value in ((str, "x"), (int, 1), (float, 0.5), (list, []), (dict, {}),
                        (bool, False)):
        if kind in kinds:
            return value
    return "x"


def _hostile_contents():
    """(verb, field, content) with exactly one hostile value, for every field of every verb."""
    from daemon import api

    for name, verb in api.VERBS.items():
        schema = api._schema(verb.request)
        for target, kinds, _ in schema:
            base = {f.name: _filler(k) for f, k, _ in schema
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            accepts = kinds or (str, int, list, dict)
            values: list = []
            if str in accepts:
                values += HOSTILE_STRINGS
            if int in accepts or float in accepts:
                values += HOSTILE_INTS
            if list in accepts:
                values += [[s] for s in HOSTILE_STRINGS[:2]] + [[2**63]]
            if dict in accepts:
                values += [{"k": s} for s in HOSTILE_STRINGS[:2]] + [{"k": 2**64},
                                                                     {"a\x00": 1}]
            for value in values:
                yield name, target.name, dict(base, **{target.name: value})


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_fuzz_hostile_values_and_shapes(daemon):
    session, ctx, sock = _dealer()
    outcomes: Counter[str] = Counter()
    sent = 0

    def send(frames: list[bytes], expect: str | None, batch: str) -> None:
        nonlocal sent
        outcome = _send_and_classify(sock, frames, session)  # exactly one reply each
        sent += 1
        outcomes[f"{batch} {outcome}"] += 1
        if expect is not None:
            assert outcome == expect, (batch, frames[4][:200] if len(frames) > 4 else frames)

    def still_serving() -> None:
        assert _send_and_classify(sock, session.request("status_request", {})[1],
                                  session) == "ok"
        assert daemon.proc.poll() is None

    # NUL, lone surrogates and 64-bit overflow in every field of every verb: BadRequest.
    for verb, _, content in _hostile_contents():
        send(session.request(f"{verb}_request", content)[1], "error:BadRequest", "values")
    still_serving()

    # Nesting up to 10^5, in the content, the header and the parent header.
    for depth in DEPTHS:
        for verb in HARMLESS:
            _, frames = session.request(f"{verb}_request", {})
            content = b'{"deep":' + _nested(depth) + b"}"  # the frame nests depth + 1
            body = [frames[2], frames[3], content]
            send([proto.DELIMITER, session.sign(body), *body],
                 "error:BadJSON" if depth + 1 > proto.MAX_DEPTH else None, "depth")
        header = session.header("status_request")
        raw_header = json.dumps(header)[:-1].encode() + b',"deep":' + _nested(depth) + b"}"
        for body in ([raw_header, b"{}", b"{}"],
                     [json.dumps(session.header("status_request")).encode(),
                      b'{"deep":' + _nested(depth) + b"}", b"{}"]):
            send([proto.DELIMITER, session.sign(body), *body],
                 "error:BadJSON" if depth + 1 > proto.MAX_DEPTH else "ok", "depth")
        still_serving()

    # 10^3-frame messages: signed or not, frames before or after the delimiter.
    for _ in range(10):
        _, frames = session.request("status_request", {})
        send(frames + [b"{}"] * 1000, "error:BadFrames", "frames")
        send([b"r"] * 1000 + frames, "error:BadFrames", "frames")
        send([b"x" * 1024] * 1000, "error:BadFrames", "frames")
        still_serving()

    assert not sock.poll(500), "a request got more than one reply"
    print(f"\nhostile fuzz: {sent} messages; outcomes:")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:32s} {count}")
    assert outcomes["values error:BadRequest"] == sum(1 for _ in _hostile_contents())
    assert outcomes["depth error:BadJSON"] > 0 and outcomes["frames error:BadFrames"] == 30
    status = session.deserialize(_request(sock, session, "status")).content
    assert status["pid"] == daemon.pid
    assert "InternalError" not in status["counters"]
    assert "Traceback" not in daemon.output()
    ctx.destroy(linger=0)


def _request(sock: zmq.Socket, session: proto.Session, verb: str) -> list[bytes]:
    sock.send_multipart(session.request(f"{verb}_request", {})[1])
    assert sock.poll(REPLY_TIMEOUT_MS)
    return sock.recv_multipart()
