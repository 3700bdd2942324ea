"""Video decoding (PyAV), uniform frame sampling, resizing and normalisation.

Frames leave the data pipeline as ``[T, R, R, 3]`` uint8; the model normalises them with
:func:`normalize_frames` (the vision tower's mean/std).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import av
import numpy as np
from PIL import Image


class VideoDecodeError(ValueError):
    """A video file could not be decoded; the message starts with the file's path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """Uniform frame indices as lmms-eval samples them: ``linspace(0, total-1, num_frames)``
    truncated to int (repeats frames when the video is shorter than ``num_frames``)."""
    if total < 1:
        raise ValueError(f"cannot sample {num_frames} frames from an empty video")
    return np.linspace(0, total - 1, num_frames, dtype=int)


@dataclasses.dataclass(frozen=True)
class ContainerInfo:
    """What a container declares about its first video stream (before decoding anything).

    ``frames``: declared frame count (0: not declared, e.g. WebM); ``duration``: seconds
    (stream's, else the container's; None: unknown); ``rate``: average frames per second
    (None: unknown); ``start``: the stream's first timestamp in seconds.
    """

    frames: int
    duration: float | None
    rate: float | None
    start: float


def container_info(path: str) -> ContainerInfo:
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        st = container.streams.video[0]
        tb = float(st.time_base) if st.time_base else None
        duration = float(st.duration * tb) if st.duration and tb else None
        if duration is None and container.duration:
            duration = container.duration / av.time_base
        rate = float(st.average_rate) if st.average_rate else None
        start = float(st.start_time * tb) if st.start_time is not None and tb else 0.0
        return ContainerInfo(frames=max(int(st.frames or 0), 0), duration=duration, rate=rate, start=start)


def _decode_selected(path: str, wanted: np.ndarray, resolution: int
                     ) -> tuple[dict[int, np.ndarray], int, float | None]:
    """One decode pass keeping the frames in ``wanted``; returns them, the number of frames
    decoded and the end time (seconds) of the last decoded frame's timestamp (None: no timestamps)."""
    keep, n, last = {}, 0, None
    want = set(int(i) for i in wanted)
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if n in want:
                keep[n] = frame.reformat(width=resolution, height=resolution, format="rgb24",
                                         interpolation="BILINEAR").to_ndarray()
            if frame.time is not None:
                last = frame.time if last is None else max(last, frame.time)
            n += 1
    return keep, n, last


def allowed_shortfall(expected: float) -> float:
    """Frames a decode may fall short of the container's declaration before it counts as
    truncated: max(2, 2%) — room for edit lists and rounded durations, never half a video."""
    return max(2.0, 0.02 * expected)


def check_complete(path: str, info: ContainerInfo, decoded: int, last_time: float | None) -> None:
    """Raises :class:`VideoDecodeError` if ``decoded`` frames (the last at ``last_time`` s) fall
    short of the frame count or the duration ``info`` declares (a cut-off file decodes cleanly
    up to the cut, e.g. a faststart mp4 whose index promises more frames than remain)."""
    if info.frames and info.frames - decoded > allowed_shortfall(info.frames):
        raise VideoDecodeError(path, f"decoded {decoded} of the {info.frames} frames the container declares "
                                     "(truncated or damaged file)")
    if info.duration and info.rate and last_time is not None:
        covered = last_time - info.start + 1.0 / info.rate
        missing = (info.duration - covered) * info.rate
        if missing > allowed_shortfall(info.duration * info.rate):
            raise VideoDecodeError(path, f"decoded frames cover {covered:.2f} s of the {info.duration:.2f} s the "
                                         "container declares (truncated or damaged file)")


def decode_video_with_indices(path: str | os.PathLike, num_frames: int, resolution: int
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``num_frames`` uniformly sampled frames of ``path`` as ``[T, R, R, 3]`` uint8, and their
    indices ``[T]`` among the frames actually decoded (lmms-eval sampling over that count).

    Raises :class:`VideoDecodeError` (naming the file) for a missing, undecodable or
    truncated file: one whose decoded frames fall short of the container's declared frame
    count or duration (beyond :func:`allowed_shortfall`).  Uses the declared frame count
    to select frames in one pass; a second pass only when the count was absent or low.
    """
    path = str(path)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "no such file")
    try:
        info = container_info(path)
        wanted = sample_indices(info.frames, num_frames) if info.frames > 0 else np.zeros(0, int)
        keep, n, last = _decode_selected(path, wanted, resolution)  # a pure counting pass if count unknown
        if n == 0:
            raise VideoDecodeError(path, "no decodable frames")
        check_complete(path, info, n, last)
        if n != info.frames:  # the container's count was missing or low: select against the real one
            wanted = sample_indices(n, num_frames)
            keep, n2, _ = _decode_selected(path, wanted, resolution)
            if n2 != n:
                raise VideoDecodeError(path, f"decoded {n} then {n2} frames: unstable stream")
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise VideoDecodeError(path, f"{type(e).__name__}: {e}") from e
    return np.stack([keep[int(i)] for i in wanted]).astype(np.uint8), np.asarray(wanted, np.int64)


def decode_video(path: str | os.PathLike, num_frames: int, resolution: int) -> np.ndarray:
    """``num_frames`` uniformly sampled frames of ``path``, squashed to ``[T, R, R, 3]`` uint8.

    See :func:`decode_video_with_indices` (the same, with the sampled frame indices).
    """
    return decode_video_with_indices(path, num_frames, resolution)[0]


def encode_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 8, codec: str = "libx264",
                 lossless: bool = True) -> None:
    """Write ``frames [T, H, W, 3]`` uint8 to a video file (H, W even for yuv420p codecs)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        if codec == "libx264" and lossless:
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0"}
        else:
            stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def resize_frames(frames: np.ndarray, resolution: int) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 → ``[T, R, R, 3]`` uint8 (bilinear, aspect squashed like SigLIP)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (resolution, resolution):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution), Image.BILINEAR))
                     for f in frames])


def normalize_frames(frames, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
    """``[..., 3]`` uint8 → float32 ``(x / 255 - mean) / std`` (SigLIP's defaults map to [-1, 1]).

    Works on numpy and JAX arrays alike (uses the array's own operators)."""
    x = frames.astype("float32") / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
