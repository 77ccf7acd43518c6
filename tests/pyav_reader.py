"""The stand-in for torchvision.io.read_video that both video oracles (tests/oracle3_video.py, oracle35_video.py) give
qwen-vl-utils: torchvision 0.29 dropped read_video, which qwen-vl-utils' torchvision backend calls. Plain PyAV +
numpy + torch, importable from either oracle venv."""
import math

import av
import numpy as np
import torch


def read_video(filename, start_pts=0, end_pts=None, pts_unit="pts", output_format="THWC"):
    """What torchvision.io.read_video(pts_unit="sec") returned with its PyAV backend (torchvision <= 0.23): seek to
    the start, decode the first video stream, keep frames by pts within [start, end], sorted by pts; decoding errors
    end the read silently; info["video_fps"] = float(average_rate). Audio is not read (qwen-vl-utils drops it)."""
    assert pts_unit == "sec" and start_pts == 0 and end_pts is None, "qwen-vl-utils calls it this way only"
    frames, info = {}, {}
    with av.open(filename, metadata_errors="ignore") as container:
        if container.streams.video:
            stream = container.streams.video[0]
            try:
                container.seek(0, any_frame=False, backward=True, stream=stream)
                for frame in container.decode(video=0):
                    frames[frame.pts] = frame.to_ndarray(format="rgb24")
            except av.FFmpegError:
                pass
            if stream.average_rate is not None:
                info["video_fps"] = float(stream.average_rate)
    kept = [frames[pts] for pts in sorted(frames) if 0 <= pts <= math.inf]
    video = torch.as_tensor(np.stack(kept)) if kept else torch.empty((0, 1, 1, 3), dtype=torch.uint8)
    if output_format == "TCHW":
        video = video.permute(0, 3, 1, 2)
    return video, torch.empty((1, 0)), info
