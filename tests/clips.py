"""Synthetic media files written with PyAV, so tests need no fixtures on disk."""
from fractions import Fraction

import av
import numpy as np


def _frames(n_frames, width, height, rng):
    """Yield [H, W, 3] uint8 frames: drifting gradients + a moving disc and bar + noise, so any resize
    or rounding difference shows up in the pixels. uint8 arithmetic wraps, i.e. works mod 256."""
    y, x = np.ogrid[0:height, 0:width]
    base = np.stack(np.broadcast_arrays(x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                                        (x + 2 * y) * 3), axis=-1).astype(np.uint8)
    r = max(2, min(width, height) // 5)
    for i in range(n_frames):
        img = base + np.array([9 * i, 5 * i, 17 * i]).astype(np.uint8)  # colours drift (mod 256)
        cx, cy = (7 * i) % width, (height // 2 + 3 * i) % height
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (250, 30, 60)
        img[:, (11 * i) % width: (11 * i) % width + max(1, width // 12)] = (20, 200, 240)
        img += rng.integers(0, 256, img.shape, dtype=np.uint8) & 31       # noise in 0..31
        yield img


def write_clip(path, n_frames, width, height, fps, codec="mpeg4", pix_fmt="yuv420p", seed=0, options=None):
    """Write an n_frames clip; fps may be int, float or Fraction (Fraction(30000, 1001) for 29.97)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(65535), options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for img in _frames(n_frames, width, height, rng):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())                            # flush delayed frames
    return path


def write_audio_only(path, seconds=0.5, rate=8000):
    """A .wav with one mono PCM stream and no video stream."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None]   # [1, samples]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_empty_video(path):
    """A .mkv whose video stream has zero frames (only an audio packet is muxed, so the header is written)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
        container.mux(video.encode())
    return path
