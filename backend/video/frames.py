"""The `frames` stage: decode a video with PyAV (its wheels carry their own
FFmpeg, so users need no system ffmpeg), choose the frames to keep
(backend/video/selection.py) and write them as JPEGs into the stage's output
folder, with frames.json recording where each came from.

Two passes over the video: the first measures every frame on a small grey
copy, the second writes the chosen ones at full size. Keeping full frames in
memory between the passes would need gigabytes for a minute of 4K; decoding
twice costs seconds.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from backend.errors import ErrorCode, ReconstructError
from backend.video import selection

if TYPE_CHECKING:
    from backend.job.stage_context import StageContext

FRAMES_JSON = "frames.json"
ANALYSIS_SIZE = 640
"""Longest side (px) of the grey copy each frame is measured on: motion blur
of a few pixels at 1080p still shows, and measuring costs little."""
MIN_SECONDS = 1.0
MIN_DECODED = 10
MIN_KEPT = 8
"""Below these a video cannot make a reconstruction worth the wait."""
JPEG_QUALITY = 95
FRAME_NAME = "frame_{:06d}.jpg"


@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    duration: float
    """Seconds, from the container (0 when it does not say)."""
    frames: int
    """Frames the container announces (0 when it does not say)."""
    codec: str
    rotation: int
    """Degrees the frames are turned when displayed (phones store portrait video on its side)."""
    focal_35mm: float | None = None
    """35 mm-equivalent focal length from the metadata, when the video carries one."""
    metadata: dict = field(default_factory=dict)


def _not_a_video(path: Path, why: str) -> ReconstructError:
    return ReconstructError(
        ErrorCode.BAD_VIDEO, f"{path.name} is not a video that can be read ({why}). The file was not changed.",
        "Choose a video file (.mp4, .mov, .mkv, ...) or a folder of photos. If the video plays elsewhere, "
        "convert it to H.264 MP4 and try again.", {"file": str(path), "reason": why})


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except av.error.FileNotFoundError:
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND, f"The video {path} does not exist.",
                               "Choose the video file again (it may have been moved or renamed).") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise _not_a_video(path, str(getattr(exc, "strerror", None) or exc).rstrip(".")) from None
    if not container.streams.video:
        container.close()
        raise _not_a_video(path, "it holds no video stream, only "
                                 + (", ".join(sorted({s.type for s in container.streams})) or "nothing"))
    return container


_FOCAL_KEY = re.compile(r"focal.?length.*35|35.*focal", re.IGNORECASE)


def _focal_35mm(metadata: dict) -> float | None:
    """A 35 mm-equivalent focal from the container's metadata (Apple writes
    com.apple.quicktime.camera.focal_length.35mm_equivalent; others, if any, similar)."""
    for key, value in metadata.items():
        if _FOCAL_KEY.search(key):
            match = re.search(r"\d+(\.\d+)?", str(value))
            if match and 5 <= float(match.group()) <= 2000:
                return float(match.group())
    return None


def probe(path: Path) -> VideoInfo:
    container = _open(path)
    try:
        stream = container.streams.video[0]
        metadata = {**dict(container.metadata), **dict(stream.metadata)}
        rate = stream.average_rate or stream.guessed_rate or 0
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else \
            (container.duration / 1e6 if container.duration else 0.0)
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        return VideoInfo(str(path), stream.codec_context.width, stream.codec_context.height, float(rate),
                         duration, int(stream.frames or 0), codec, 0, _focal_35mm(metadata),
                         {str(k): str(v) for k, v in metadata.items()})
    finally:
        container.close()


def _frames(path: Path, errors: list[str]):
    """Every frame that decodes, in order; errors (damaged packets) are counted, not raised."""
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():
                    yield frame
            except av.error.FFmpegError as exc:
                errors.append(str(exc))
        try:
            for frame in stream.codec_context.decode(None):  # what the decoder still holds
                yield frame
        except av.error.FFmpegError as exc:
            errors.append(str(exc))
    finally:
        container.close()


def _upright(array: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as displayed: PyAV's rotation is counter-clockwise degrees from the display matrix."""
    turns = int(round(rotation / 90)) % 4
    return np.rot90(array, turns) if turns else array


def _analysis_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, ANALYSIS_SIZE / max(width, height))
    return max(16, int(round(width * scale / 2)) * 2), max(16, int(round(height * scale / 2)) * 2)


@dataclass
class Selection:
    info: VideoInfo
    decoded: int
    kept: list[selection.FrameMeasure]
    blurred: list[int]
    """Frame numbers left out as blurred."""
    target: int
    decode_errors: int


def select_frames(path: Path, target_frames: int, progress: Callable[[float, str], None]) -> Selection:
    """Pass one: measure every frame and choose. Raises a user's message for a
    file that is not a video, a video with no frame that decodes, or one too short."""
    info = probe(path)
    expected = info.frames or int(info.duration * info.fps) or 0
    measures, errors, rotation = [], [], 0
    size = None
    for frame in _frames(path, errors):
        if size is None:
            rotation = int(getattr(frame, "rotation", 0) or 0)
            size = _analysis_size(frame.width, frame.height)
        grey = frame.to_ndarray(format="gray", width=size[0], height=size[1])
        t = float(frame.time) if frame.time is not None else len(measures) / (info.fps or 30.0)
        measures.append(selection.measure(len(measures), t, _upright(grey, rotation)))
        if len(measures) % 30 == 0:
            progress(0.8 * min(1.0, len(measures) / expected) if expected else 0.4,
                     f"{len(measures)} frames read")
    info.rotation = rotation
    if not measures:
        raise ReconstructError(
            ErrorCode.BAD_VIDEO,
            f"No frame of {path.name} could be decoded ({info.codec} video"
            + (f"; all {len(errors)} of its packets are damaged" if errors else "") + "). The file was not changed.",
            "The video may be damaged or incomplete (a copy that did not finish). Play it to check, or export it "
            "again as H.264 MP4.", {"file": str(path), "codec": info.codec, "errors": errors[:5]})
    duration = max(info.duration, measures[-1].time - measures[0].time)
    if duration < MIN_SECONDS or len(measures) < MIN_DECODED:
        raise ReconstructError(
            ErrorCode.BAD_VIDEO,
            f"{path.name} is too short to reconstruct from: {duration:.1f} s, {len(measures)} frames.",
            "Film at least 10 seconds, moving slowly around the subject (or along the scene).",
            {"file": str(path), "seconds": duration, "frames": len(measures)})
    target = target_frames or selection.auto_target(duration)
    window = max(5, int(round(info.fps or 30)))
    positions, bad = selection.choose(measures, target, window)
    kept = [measures[i] for i in positions]
    if len(kept) < MIN_KEPT:
        raise ReconstructError(
            ErrorCode.BAD_VIDEO,
            f"Only {len(kept)} sharp frames in {path.name} ({len(measures)} decoded, {int(bad.sum())} blurred): "
            "too few to reconstruct from.",
            "Film more slowly and steadily, in good light, for at least 10 seconds.",
            {"file": str(path), "decoded": len(measures), "blurred": int(bad.sum())})
    return Selection(info, len(measures), kept, [m.index for m, b in zip(measures, bad) if b], target, len(errors))


def write_frames(path: Path, chosen: Selection, out: Path, progress: Callable[[float, str], None]) -> list[dict]:
    """Pass two: the chosen frames at full size as JPEGs (with the video's 35 mm focal
    in their EXIF when it has one, so feature extraction starts from it)."""
    from PIL import Image

    wanted = {m.index: m for m in chosen.kept}
    out.mkdir(parents=True, exist_ok=True)
    exif = None
    if chosen.info.focal_35mm:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = int(round(chosen.info.focal_35mm))  # FocalLengthIn35mmFilm
    written = []
    for index, frame in enumerate(_frames(path, [])):
        m = wanted.get(index)
        if m is None:
            continue
        image = Image.fromarray(_upright(frame.to_ndarray(format="rgb24"), chosen.info.rotation))
        name = FRAME_NAME.format(index)
        image.save(out / name, quality=JPEG_QUALITY, **({"exif": exif} if exif is not None else {}))
        written.append({"name": name, "index": index, "time": round(m.time, 6), "sharpness": round(m.sharpness, 3)})
        progress(0.8 + 0.2 * len(written) / len(wanted), f"{len(written)} of {len(wanted)} frames kept")
        if len(written) == len(wanted):
            break
    return written


def frames_stage(ctx: "StageContext") -> dict:
    path = Path(ctx.decided["video"])
    chosen = select_frames(path, ctx.options.video.target_frames, ctx.progress)
    ctx.log(f"{path.name}: {chosen.decoded} frames decoded, {len(chosen.blurred)} blurred, "
            f"{len(chosen.kept)} kept (target {chosen.target})")
    if chosen.decode_errors:
        ctx.warn("damaged_video", f"{chosen.decode_errors} damaged packets in {path.name} were skipped.",
                 {"file": str(path)})
    written = write_frames(path, chosen, ctx.out, ctx.progress)
    info = chosen.info
    record = {"source": str(path), "width": info.width, "height": info.height, "fps": info.fps,
              "duration": info.duration, "codec": info.codec, "rotation": info.rotation,
              "focal_35mm": info.focal_35mm, "decoded": chosen.decoded, "target": chosen.target,
              "blurred": chosen.blurred, "frames": written}
    (ctx.out / FRAMES_JSON).write_text(json.dumps(record, indent=1))
    return {k: v for k, v in record.items() if k != "frames"} | {
        "kept": len(written), "first_time": written[0]["time"], "last_time": written[-1]["time"]}
