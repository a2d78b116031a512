"""The wire protocol on its own: signing, replay, versions, frames, over real inproc sockets."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
import zmq

from daemon import protocol as proto

KEY = b"k" * 32


def test_round_trip_over_inproc_router_dealer():
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://p")
    dealer.connect("inproc://p")
    client, server = proto.Session(KEY), proto.Session(KEY)
    header, frames = client.request("status_request", {"x": [1, "é"]})
    dealer.send_multipart(frames)
    msg = server.deserialize(router.recv_multipart())
    assert msg.msg_type == "status_request" and msg.content == {"x": [1, "é"]}
    assert len(msg.routing) == 1  # the ROUTER's identity frame
    reply = server.serialize(server.header("status_reply"), {"status": "ok"}, msg.header,
                             routing=msg.routing)
    router.send_multipart(reply)
    back = client.deserialize(dealer.recv_multipart())
    assert back.parent_header["msg_id"] == header["msg_id"]
    for sock in (router, dealer):
        sock.close(0)
    ctx.term()


def test_every_frame_is_signed():
    session = proto.Session(KEY)
    _, frames = session.request("status_request", {"a": 1})
    for i in range(2, 5):  # header, parent, content
        tampered = list(frames)
        tampered[i] = tampered[i].replace(b"}", b" }", 1)
        with pytest.raises(proto.ProtocolError) as err:
            session.deserialize(tampered)
        assert err.value.kind == "BadSignature"


def test_wrong_key_and_missing_signature_are_rejected():
    _, frames = proto.Session(KEY).request("status_request", {})
    with pytest.raises(proto.ProtocolError, match="wrong key") as err:
        proto.Session(b"other-key").deserialize(frames)
    assert err.value.kind == "BadSignature"
    unsigned = frames[:1] + [b""] + frames[2:]
    with pytest.raises(proto.ProtocolError) as err:
        proto.Session(KEY).deserialize(unsigned)
    assert err.value.kind == "BadSignature"


def test_event_topic_is_covered_by_the_signature():
    session = proto.Session(KEY)
    frames = session.serialize(session.header("event", topic="job.1.progress"), {"s": 1},
                               topic=b"job.1.progress")
    assert session.deserialize(frames, topic_frame=True).content == {"s": 1}
    frames[0] = b"job.2.progress"
    with pytest.raises(proto.ProtocolError):
        session.deserialize(frames, topic_frame=True)


def test_replayed_seq_is_rejected():
    guard = proto.SeqGuard()
    session = proto.Session(KEY)
    first = session.deserialize(session.request("status_request", {})[1])
    second = session.deserialize(session.request("status_request", {})[1])
    for msg in (first, second):
        guard.check(msg.header["session"], msg.header["seq"], msg.header["date"])
    with pytest.raises(proto.ProtocolError) as err:
        guard.check(first.header["session"], first.header["seq"], first.header["date"])
    assert err.value.kind == "Replay"


def test_version_mismatch_and_negotiation():
    session = proto.Session(KEY)
    header = session.header("hello_request")
    header["version"] = "2.0"
    frames = session.serialize(header, {})
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize(frames)
    assert err.value.kind == "VersionMismatch"
    assert proto.negotiate(["0.9", "1.0"]) == "1.0"
    assert proto.negotiate(["2.0"]) is None
    assert proto.negotiate("1.0") is None


@pytest.mark.parametrize("mutate, kind", [
    (lambda f: f[:-1], "BadFrames"),
    (lambda f: f + [b"{}"], "BadFrames"),
    (lambda f: [x for x in f if x != proto.DELIMITER], "BadFrames"),
    (lambda f: [b"r"] * (proto.MAX_FRAMES + 1), "BadFrames"),
])
def test_bad_frame_counts(mutate, kind):
    session = proto.Session(KEY)
    _, frames = session.request("status_request", {})
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize(mutate(frames))
    assert err.value.kind == kind


def test_bad_json_and_bad_header_are_named():
    session = proto.Session(KEY)
    body = [b"not json", b"{}", b"{}"]
    frames = [proto.DELIMITER, session.sign(body), *body]
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize(frames)
    assert err.value.kind == "BadJSON"
    header = json.dumps({"msg_id": "a", "msg_type": "x", "session": "s", "seq": "1",
                         "date": "", "version": "1.0"}).encode()
    body = [header, b"{}", b"{}"]
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize([proto.DELIMITER, session.sign(body), *body])
    assert err.value.kind == "BadHeader"


def _checked(guard: proto.SeqGuard, session: proto.Session, **header_extra) -> None:
    header = dict(session.header("ab_rating_request"), **header_extra)
    guard.check(header["session"], header["seq"], header["date"])


def test_a_replay_is_refused_after_thousands_of_other_sessions():
    # Before: SeqGuard forgot the least recent of 4096 sessions, so after 4096 others the
    # first session's old message was accepted again.
    guard = proto.SeqGuard()
    victim = proto.Session(KEY)
    old = victim.header("ab_rating_request")
    guard.check(old["session"], old["seq"], old["date"])
    for _ in range(5000):
        _checked(guard, proto.Session(KEY))
    with pytest.raises(proto.ProtocolError) as err:
        guard.check(old["session"], old["seq"], old["date"])
    assert err.value.kind == "Replay"


def test_messages_dated_outside_the_window_are_refused_naming_clock_skew():
    guard = proto.SeqGuard()
    for offset in (-proto.DATE_WINDOW_S - 60, proto.DATE_WINDOW_S + 60):
        date = datetime.fromtimestamp(time.time() + offset, timezone.utc).isoformat()
        with pytest.raises(proto.ProtocolError) as err:
            _checked(guard, proto.Session(KEY), date=date)
        assert err.value.kind == "ClockSkew" and "clock" in err.value.message
    for bad in ("yesterday", "2026-01-01T00:00:00", 17):  # no zone, not a date
        with pytest.raises(proto.ProtocolError) as err:
            _checked(guard, proto.Session(KEY), date=bad)
        assert err.value.kind == "BadHeader"
    _checked(guard, proto.Session(KEY))  # a current date passes


def test_a_full_guard_refuses_new_sessions_and_forgets_only_expired_ones():
    now = [1_000_000.0]
    guard = proto.SeqGuard(max_sessions=3, clock=lambda: now[0])

    def date() -> str:
        return datetime.fromtimestamp(now[0], timezone.utc).isoformat()

    first = proto.Session(KEY)
    old = dict(first.header("ab_rating_request"), date=date())
    guard.check(old["session"], old["seq"], old["date"])
    for _ in range(2):
        _checked(guard, proto.Session(KEY), date=date())
    with pytest.raises(proto.ProtocolError) as err:
        _checked(guard, proto.Session(KEY), date=date())
    assert err.value.kind == "Busy"
    with pytest.raises(proto.ProtocolError) as err:  # the live session is still remembered
        guard.check(old["session"], old["seq"], old["date"])
    assert err.value.kind == "Replay"
    now[0] += 2 * proto.DATE_WINDOW_S + 1  # all three expire: room again
    _checked(guard, proto.Session(KEY), date=date())
    assert len(guard) == 1
    with pytest.raises(proto.ProtocolError) as err:  # the forgotten one is refused by date
        guard.check(old["session"], old["seq"], old["date"])
    assert err.value.kind == "ClockSkew"


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deeply_nested_frames_are_bad_json(depth):
    # Before: json.loads raised RecursionError at 10^5, which nothing caught.
    session = proto.Session(KEY)
    header, frames = session.request("status_request", {})
    body = [frames[2], frames[3], b'{"a":' + b"[" * depth + b"]" * depth + b"}"]
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize([proto.DELIMITER, session.sign(body), *body])
    assert err.value.kind == "BadJSON" and "deeper" in err.value.message
    shallow = [frames[2], frames[3], b'{"a":' + b"[" * 60 + b"]" * 60 + b"}"]
    assert session.deserialize([proto.DELIMITER, session.sign(shallow), *shallow]).content


def test_a_lone_surrogate_always_serialises():
    session = proto.Session(KEY)
    frames = session.serialize(session.header("error_reply"), {"x": "\ud800"},
                               {"msg_id": "a\udfffb"})
    assert session.deserialize(frames).content == {"x": "\ud800"}
