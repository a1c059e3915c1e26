"""Video files: stream frames out of an mp4 (or any format FFmpeg reads), resize them, and write
frames to mp4 or gif atomically. Decoding and encoding go through PyAV (FFmpeg).

Frames are always uint8 RGB arrays (H, W, 3); a clip is (T, H, W, 3).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

Fit = Literal["stretch", "crop"]
MP4_CRF = 18  # x264 constant-rate factor: visually near-lossless at a few kB per 64x64 frame


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded. The message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's container says, plus its frame count from demuxing."""

    width: int
    height: int
    fps: float
    frames: int


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: cannot open as a video: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and frame count of a video. The count comes from reading every packet
    (cheap: nothing is decoded), since containers' own frame counts are sometimes absent."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        frames = 0
        for packet in container.demux(stream):
            if packet.size:  # the demuxer ends with an empty flush packet
                frames += 1
        rate = stream.average_rate or stream.base_rate or 0
        return VideoInfo(width=stream.codec_context.width, height=stream.codec_context.height,
                         fps=float(rate), frames=frames)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot read: {e}") from e
    finally:
        container.close()


def read_frames(path: str | os.PathLike, size: tuple[int, int] | None = None, *,
                fit: Fit = "stretch") -> Iterator[np.ndarray]:
    """Decode a video frame by frame (memory stays at one frame however long the video).

    Yields uint8 (H, W, 3) RGB frames, resized to `size` = (H, W) if given (see `resize`).
    Raises VideoError naming the file if it cannot be opened or a packet cannot be decoded.
    """
    path = Path(path)
    container = _open(path)
    # one reformatter for the whole video keeps FFmpeg's colour-conversion context alive;
    # `frame.to_ndarray(format=...)` builds a new one per frame, ~2x slower at 640x360
    to_rgb = VideoReformatter()
    try:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                rgb = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                yield rgb if size is None else resize(rgb, size, fit=fit)
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: cannot decode: {e}") from e
    finally:
        container.close()


def resize(image: np.ndarray | Image.Image, size: tuple[int, int], *,
           fit: Fit = "stretch") -> np.ndarray:
    """Resize an RGB frame to `size` = (H, W) with area averaging.

    Area averaging (PIL's BOX filter) is the antialiased downscale that never rings: every
    source pixel counts once, so the hard block edges of Minecraft textures do not overshoot.
    `fit="stretch"` scales each axis on its own (what VPT does, 640x360 -> 128x128);
    `fit="crop"` first cuts the centre to the target's aspect ratio, so nothing is squashed.
    """
    H, W = size
    if H < 1 or W < 1:
        raise ValueError(f"size must be positive, got {size}")
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    box = None
    if fit == "crop":
        w, h = img.size
        if w * H > h * W:  # too wide: keep the full height
            cw = h * W / H
            box = ((w - cw) / 2, 0.0, (w + cw) / 2, float(h))
        else:
            ch = w * H / W
            box = (0.0, (h - ch) / 2, float(w), (h + ch) / 2)
    elif fit != "stretch":
        raise ValueError(f"fit must be 'stretch' or 'crop', not {fit!r}")
    if img.size == (W, H) and box is None:
        return np.asarray(img)
    return np.asarray(img.resize((W, H), Image.Resampling.BOX, box=box))


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray],
                fps: float = 20, *, upscale: int = 1, crf: int = MP4_CRF) -> Path:
    """Write uint8 frames (T, H, W, 3) to `path` as .mp4 (H.264) or .gif, atomically.

    upscale: repeat every pixel this many times in each direction (nearest neighbour), so a
             64x64 clip stays crisp in a player.
    crf:     H.264 quality for mp4, lower is better (0 lossless).
    GIF frame times are multiples of 10 ms, so the gif's frame rate is only close to `fps`.
    The file appears complete or not at all: frames go to a temporary file that is renamed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: unsupported video format {suffix!r}; use .mp4 or .gif")
    clip = np.asarray(frames if isinstance(frames, np.ndarray) else list(frames))
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8 or len(clip) == 0:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3) with T >= 1, "
                         f"got {clip.dtype} {clip.shape}")
    if upscale > 1:
        clip = clip.repeat(upscale, axis=1).repeat(upscale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        if suffix == ".mp4":
            _write_mp4(tmp, clip, fps, crf)
        else:
            _write_gif(tmp, clip, fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_mp4(path: Path, clip: np.ndarray, fps: float, crf: int) -> None:
    T, H, W, _ = clip.shape
    # yuv420p halves the chroma resolution, so it needs even sides; it is also the only
    # pixel format every player decodes. Odd sizes fall back to full-resolution chroma.
    pix_fmt = "yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.options = {"crf": str(crf)}
        for image in clip:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def _write_gif(path: Path, clip: np.ndarray, fps: float) -> None:
    images = [Image.fromarray(image) for image in clip]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(10, round(1000 / fps / 10) * 10), loop=0)
