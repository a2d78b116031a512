"""A loss-curve PNG drawn with the standard library: no plotting package is needed to train.

Training loss is a blue line, held-out loss red dots, on a white canvas with light grid lines;
the axes' ranges are printed into the run card rather than onto the image, so no font is needed.
Nothing here knows of training; it draws lists of (step, value).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

WIDTH, HEIGHT, MARGIN = 640, 360, 24
BLUE, RED, GREY, BLACK = (31, 119, 180), (214, 39, 40), (225, 225, 225), (0, 0, 0)


def _png(pixels: list[bytearray]) -> bytes:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_loss_png(path: Path, train: Sequence[tuple[int, float]],
                   held_out: Sequence[tuple[int, float]] = ()) -> Path:
    """Draw the loss curves into `path`.

    Args:
        path: the PNG to write.
        train: (step, loss) of every step.
        held_out: (step, held-out loss) of every evaluation.
    """
    pixels = [bytearray(b"\xff" * WIDTH * 3) for _ in range(HEIGHT)]

    def put(x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < WIDTH and 0 <= y < HEIGHT:
            pixels[y][3 * x:3 * x + 3] = bytes(colour)

    points = list(train) + list(held_out)
    steps = [s for s, _ in points] or [0, 1]
    values = [v for _, v in points] or [0.0, 1.0]
    low_x, high_x = min(steps), max(max(steps), min(steps) + 1)
    low_y, high_y = min(values), max(max(values), min(values) + 1e-9)

    def to_pixel(step: float, value: float) -> tuple[int, int]:
        x = MARGIN + (step - low_x) / (high_x - low_x) * (WIDTH - 2 * MARGIN)
        y = HEIGHT - MARGIN - (value - low_y) / (high_y - low_y) * (HEIGHT - 2 * MARGIN)
        return round(x), round(y)

    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = round(MARGIN + fraction * (HEIGHT - 2 * MARGIN))
        for x in range(MARGIN, WIDTH - MARGIN):
            put(x, y, GREY)
    for y in range(MARGIN, HEIGHT - MARGIN + 1):
        put(MARGIN, y, BLACK)
    for x in range(MARGIN, WIDTH - MARGIN + 1):
        put(x, HEIGHT - MARGIN, BLACK)
    previous = None
    for step, value in train:
        current = to_pixel(step, value)
        if previous is not None:
            (x0, y0), (x1, y1) = previous, current
            count = max(abs(x1 - x0), abs(y1 - y0), 1)
            for i in range(count + 1):
                put(round(x0 + (x1 - x0) * i / count), round(y0 + (y1 - y0) * i / count), BLUE)
        else:
            put(*current, BLUE)
        previous = current
    for step, value in held_out:
        cx, cy = to_pixel(step, value)
        for dx in range(-3, 4):
            for dy in range(-3, 4):
                if dx * dx + dy * dy <= 9:
                    put(cx + dx, cy + dy, RED)
    path.write_bytes(_png(pixels))
    return path
