"""The lighter wire: frames through orjson keep what the standard library's JSON kept, the
signature is the same HMAC-SHA256, and consecutive events of one topic travel as one signed
batch that the client hands out one by one."""

from __future__ import annotations

import hashlib
import hmac
import math
import time

import pytest
import zmq

from daemon import protocol as proto
from daemon.transport import BATCH_EVENTS, Transport

KEY = b"k" * 32


def test_frames_keep_what_python_json_kept():
    session = proto.Session(KEY)
    content = {"big": 2**64, "neg": -(2**63) - 1, "nan": float("nan"), "inf": float("inf"),
               "surrogate": "a\ud800b", "none": None, 7: "int key", "text": "é ✓"}
    frames = session.serialize(session.header("x_request"), content)
    back = session.deserialize(frames).content
    assert back["big"] == 2**64 and isinstance(back["big"], int)
    assert back["neg"] == -(2**63) - 1
    assert math.isnan(back["nan"]) and back["inf"] == float("inf")
    assert back["surrogate"] == "a\ud800b" and back["none"] is None
    assert back["7"] == "int key" and back["text"] == "é ✓"


def test_what_json_cannot_carry_still_fails():
    session = proto.Session(KEY)
    for value in ({1, 2}, object(), time):
        with pytest.raises(TypeError):
            session.serialize(session.header("x_request"), {"v": value})


@pytest.mark.parametrize("key", [b"k", b"k" * 32, b"k" * 64, b"k" * 65, bytes(range(200))])
def test_the_signature_is_hmac_sha256_over_length_prefixed_frames(key):
    frames = [b"header", b"", b"x" * 1000]
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        mac.update(len(frame).to_bytes(8, "big"))
        mac.update(frame)
    assert proto.Session(key).sign(frames) == mac.hexdigest().encode()


def _batch(session: proto.Session, topic: str, first: int, data: list[dict]) -> list[bytes]:
    last = first + len(data) - 1
    header = session.header("event", seq=last, topic=topic, earlier=len(data) - 1)
    earlier = b"[" + b",".join(proto.dumps(d) for d in data[:-1]) + b"]"
    return session.serialize(header, data[-1], topic=topic.encode(), earlier=earlier)


def test_a_batch_is_signed_whole_and_checked():
    session = proto.Session(KEY)
    frames = _batch(session, "bench.x", 5, [{"i": 0}, {"i": 1}, {"i": 2}])
    msg = session.deserialize(frames, topic_frame=True)
    assert msg.header["seq"] == 7 and msg.earlier == [{"i": 0}, {"i": 1}] \
        and msg.content == {"i": 2}
    tampered = frames[:-1] + [b'[{"i":9},{"i":1}]']
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize(tampered, topic_frame=True)
    assert err.value.kind == "BadSignature"
    with pytest.raises(proto.ProtocolError) as err:  # a request never has a fifth frame
        session.deserialize(frames[1:])
    assert err.value.kind == "BadFrames"
    header = session.header("event", seq=2, topic="bench.x", earlier=3)  # more than seq allows
    bad = session.serialize(header, {}, topic=b"bench.x", earlier=b"[{},{},{}]")
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize(bad, topic_frame=True)
    assert err.value.kind == "BadHeader"
    header = session.header("event", seq=9, topic="bench.x", earlier=1)
    bad = session.serialize(header, {}, topic=b"bench.x", earlier=b"[1]")
    with pytest.raises(proto.ProtocolError) as err:
        session.deserialize(bad, topic_frame=True)
    assert err.value.kind == "BadJSON"


@pytest.fixture
def publisher(tmp_path):
    """A Transport's event half on a real PUB socket, and a SUB reading everything."""
    transport = Transport.__new__(Transport)
    transport.session = proto.Session(KEY)
    transport.ctx = zmq.Context()
    transport.pub = transport.ctx.socket(zmq.PUB)
    transport.pub.bind(f"ipc://{tmp_path / 'ev'}")
    transport.event_max_bytes = 64 * 1024
    transport.events_oversize = 0
    transport._batch = None
    sub = transport.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{tmp_path / 'ev'}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the subscription has reached the publisher
        transport.send_event("sync.probe", 1, {})
        transport.flush_events()
        if sub.poll(50):
            sub.recv_multipart()
            break
    while sub.poll(100):
        sub.recv_multipart()
    yield transport, sub
    transport.ctx.destroy(linger=0)


def test_consecutive_events_of_a_topic_leave_as_one_message_in_publish_order(publisher):
    transport, sub = publisher
    published = [("job.1.log", seq, {"n": seq}) for seq in range(1, 6)] + \
        [("chat.a.token", 1, {"t": "x"}), ("job.1.log", 6, {"n": 6})] + \
        [("job.2.log", seq, {"n": seq}) for seq in range(1, BATCH_EVENTS + 3)]
    for topic, seq, data in published:
        transport.send_event(topic, seq, data)
    transport.flush_events()
    messages = []
    while sub.poll(200):
        messages.append(transport.session.deserialize(sub.recv_multipart(), topic_frame=True))
    # job.1 x5 | chat | job.1 | job.2 x256 | job.2 x2: a batch never spans topics or holds more
    # than BATCH_EVENTS
    assert [(m.header["topic"], len(m.earlier) + 1) for m in messages] == [
        ("job.1.log", 5), ("chat.a.token", 1), ("job.1.log", 1), ("job.2.log", BATCH_EVENTS),
        ("job.2.log", 2)]
    expanded = []
    for msg in messages:
        first = msg.header["seq"] - len(msg.earlier)
        expanded += [(msg.header["topic"], first + i, d)
                     for i, d in enumerate([*msg.earlier, msg.content])]
    assert expanded == published


def test_a_gap_in_seqs_or_an_oversized_event_ends_a_batch(publisher):
    transport, sub = publisher
    transport.send_event("job.1.log", 1, {"n": 1})
    transport.send_event("job.1.log", 2, {"n": 2})
    size = transport.send_event("job.1.log", 3, {"pad": "x" * (70 * 1024)})  # too big to send
    assert size > transport.event_max_bytes and transport.events_oversize == 1
    transport.send_event("job.1.log", 4, {"n": 4})
    transport.send_event("job.1.log", 6, {"n": 6})  # seq 5 was never sent
    transport.flush_events()
    messages = []
    while sub.poll(200):
        msg = transport.session.deserialize(sub.recv_multipart(), topic_frame=True)
        messages.append(list(range(msg.header["seq"] - len(msg.earlier), msg.header["seq"] + 1)))
    assert messages == [[1, 2], [4], [6]]  # subscribers see the gaps and fetch 3 and 5
