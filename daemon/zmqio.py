"""Sending and reading one multipart message with fewer Python calls than pyzmq's helpers.

`send_multipart` and `recv_multipart` combine flags as `zmq.Flag` enums on every frame; with
six frames a message that costs a few microseconds, as much as the signature. These take plain
integer flags. This module knows sockets only: nothing of the protocol inside the frames.
"""

from __future__ import annotations

from typing import Any

import zmq

_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_MORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def send_frames(sock: Any, frames: list[bytes], block: bool = False) -> None:
    """Send `frames` as one message; raises zmq.Again when not `block` and there is no room
    (only ever on the first frame: ZeroMQ takes the rest of a message it has begun)."""
    send = sock.send
    more, last = (_MORE, 0) if block else (_MORE_NOBLOCK, _NOBLOCK)
    for frame in frames[:-1]:
        send(frame, more)
    send(frames[-1], last)


def recv_frames(sock: Any, block: bool = False) -> list[bytes]:
    """All frames of the next message; raises zmq.Again when not `block` and none waits."""
    flags = 0 if block else _NOBLOCK
    recv, option = sock.recv, sock.getsockopt
    frames = [recv(flags)]
    while option(_RCVMORE):
        frames.append(recv(flags))
    return frames
