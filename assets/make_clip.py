"""Writes assets/clip.mp4, the clip of the README's first command: a figure throws a red ball, which flies in an arc,
bounces once and hits a tower of three blue blocks; the top two fall off to the right. 4 s at 25 fps, 320x240, H.264,
drawn with numpy.

    python assets/make_clip.py [OUT]

Nothing is random and x264 runs on one thread, so one PyAV/FFmpeg build always writes the same bytes.
"""
import math
import os
import sys

import av
import numpy as np

W, H, FPS, SECONDS = 320, 240, 25, 4
GROUND, SHOULDER, ARM = 190, (45, 125), 20  # grass line; the thrower's shoulder and arm length
THROW, LAND, HIT = 0.8, 1.7, 2.3  # seconds: the ball leaves the hand, lands, hits the tower
BALL, BLOCK, TOWER = 7, 22, 250  # ball radius, block side, tower centre x
y, x = np.mgrid[0:H, 0:W]


def arm_angle(t):  # radians, image coordinates (0: right, -pi/2: up): back over the head, then a follow-through
    return -2.5 + 1.6 * t / THROW if t < THROW else -0.9 + 1.5 * min((t - THROW) / 0.3, 1.0)


def hand(t):
    a = arm_angle(t)
    return SHOULDER[0] + ARM * math.cos(a), SHOULDER[1] + ARM * math.sin(a)


def ball(t):
    """In the hand; an arc up and over to x=190; a lower hop to the tower's foot; knocked back a little after the hit."""
    rest, foot = GROUND - BALL, TOWER - BLOCK / 2 - BALL
    if t < THROW:
        return hand(t)
    if t < LAND:  # the apex 70 px above the straight line from the hand to the landing point
        u, (x0, y0) = (t - THROW) / (LAND - THROW), hand(THROW)
        return x0 + u * (190 - x0), y0 + u * (rest - y0) - 4 * 70 * u * (1 - u)
    if t < HIT:
        u = (t - LAND) / (HIT - LAND)
        return 190 + u * (foot - 190), rest - 4 * 30 * u * (1 - u)
    u = min((t - HIT) / 1.2, 1.0)
    return foot - 30 * (1 - (1 - u) ** 2), rest


def block(i, t):
    """Block i (0 = bottom): centre and angle. The bottom one stays; after the hit the others topple to the right,
    accelerating, and end on the grass beside it."""
    x0, y0 = TOWER, GROUND - BLOCK / 2 - i * BLOCK
    if i == 0 or t < HIT:
        return x0, y0, 0.0
    u = min((t - HIT) / (0.4 + 0.15 * i), 1.0) ** 2
    return x0 + u * 1.1 * i * BLOCK, y0 + u * (GROUND - BLOCK / 2 - y0), u * math.pi / 2


def segment(img, p, q, color, width=2.5):
    (x0, y0), (x1, y1) = p, q
    u = np.clip(((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
    img[(x - x0 - u * (x1 - x0)) ** 2 + (y - y0 - u * (y1 - y0)) ** 2 < width**2] = color


def frame(t):
    img = np.empty((H, W, 3), np.uint8)
    img[:GROUND] = (np.linspace(0, 1, GROUND)[:, None, None] * [60, 40, 10] + [120, 180, 235]).astype(np.uint8)  # sky
    img[GROUND:] = (70, 150, 60)
    img[(x - 280) ** 2 + (y - 40) ** 2 < 15**2] = (250, 220, 80)  # sun
    img[(x - 45) ** 2 + (y - 105) ** 2 < 9**2] = (235, 190, 150)  # the thrower's head
    for p, q in (((45, 114), (45, 155)), ((45, 155), (33, GROUND)), ((45, 155), (57, GROUND)), (SHOULDER, hand(t))):
        segment(img, p, q, (40, 40, 40))
    for i in range(3):
        cx, cy, a = block(i, t)
        r = np.maximum(np.abs((x - cx) * math.cos(a) + (y - cy) * math.sin(a)),
                       np.abs((y - cy) * math.cos(a) - (x - cx) * math.sin(a)))  # a rotated square's "radius"
        img[r < BLOCK / 2] = (30, 30, 90)
        img[r < BLOCK / 2 - 2] = (60, 90, 220)
    bx, by = ball(t)
    img[(x - bx) ** 2 + (y - by) ** 2 < BALL**2] = (220, 30, 30)
    return img


def main(out):
    with av.open(out, "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "20", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(FPS * SECONDS):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(i / FPS), format="rgb24")))
        container.mux(stream.encode())  # flush delayed frames
    print(f"{out}: {FPS * SECONDS} frames {W}x{H}, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip.mp4"))
