"""The wire protocol on its own: signing, replay, versions, frames, over real inproc sockets."""

from __future__ import annotations

import json

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
    guard.check(first.header["session"], first.header["seq"])
    guard.check(second.header["session"], second.header["seq"])
    with pytest.raises(proto.ProtocolError) as err:
        guard.check(first.header["session"], first.header["seq"])
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
