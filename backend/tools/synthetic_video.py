"""A synthetic turntable video with ground truth: the object scene rendered
from one full orbit (backend/tools/synthetic_scene.py, layout "orbit"), a few
frames smeared by a simulated jerk of the camera, encoded to H.264 MP4
through Blender's own FFmpeg output (the video sequencer plays the frames
into a movie file).

``video.json`` beside the movie records the frame rate, which frames were
blurred and, for every frame, the camera centre it was rendered from.

    python -m backend.tools.synthetic_video OUT_DIR [--frames 120] [--fps 10]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend.tools.synthetic_scene import SceneParams, ensure_scene

VIDEO_VERSION = 1
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class VideoParams:
    frames: int = 120
    """Frames over one full turn (the video's length is frames / fps)."""
    fps: int = 10
    width: int = 480
    height: int = 360
    samples: int = 4
    blurred: tuple[int, ...] = (17, 46, 47, 81, 103)
    """Frames smeared by motion blur (two in a row once, as a real jerk does)."""
    blur_px: int = 21
    """Length of the smear in pixels, along the image's x axis (the orbit's direction)."""

    def scene(self) -> SceneParams:
        return SceneParams(views=self.frames, width=self.width, height=self.height, samples=self.samples,
                           layout="orbit")


def ensure_video(out_dir: str | Path, params: VideoParams = VideoParams()) -> Path:
    """``out_dir`` holding ``orbit.mp4`` and ``video.json`` made with ``params`` (reused when they match).
    Rendering and encoding run in subprocesses, so the caller never imports bpy."""
    out_dir = Path(out_dir).resolve()
    if _matches(out_dir, params):
        return out_dir
    scene = ensure_scene(out_dir / "scene", params.scene())
    proc = subprocess.run([sys.executable, "-m", "backend.tools.synthetic_video", str(out_dir), "--encode",
                           json.dumps(dataclasses.asdict(params)), str(scene)], cwd=_REPO_ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not _matches(out_dir, params):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"synthetic video generation failed (exit {proc.returncode}):\n{tail}")
    return out_dir


def _matches(out_dir: Path, params: VideoParams) -> bool:
    try:
        info = json.loads((out_dir / "video.json").read_text())
    except (OSError, ValueError):
        return False
    return (info.get("version") == VIDEO_VERSION and info.get("params") == json.loads(json.dumps(dataclasses.asdict(params)))
            and (out_dir / "orbit.mp4").is_file())


def smear(image: np.ndarray, length: int) -> np.ndarray:
    """Motion blur along x: the mean of `length` shifted copies (edge pixels repeated)."""
    pad = length // 2
    padded = np.pad(image.astype(np.float32), ((0, 0), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros(image.shape, np.float32)
    for k in range(length):
        out += padded[:, k:k + image.shape[1]]
    return np.clip(out / length + 0.5, 0, 255).astype(np.uint8)


def _encode(out_dir: Path, params: VideoParams, scene_dir: Path) -> None:
    import bpy
    from PIL import Image

    info = json.loads((scene_dir / "scene.json").read_text())
    frames_dir = out_dir / "frames.tmp"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(info["images"]):
        image = np.asarray(Image.open(scene_dir / rel).convert("RGB"))
        if i in params.blurred:
            image = smear(image, params.blur_px)
        Image.fromarray(image).save(frames_dir / f"{i:04d}.png")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    editor = scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences  # renamed in Blender 5
    files = sorted(frames_dir.glob("*.png"))
    strip = strips.new_image("frames", str(files[0]), 1, 1)
    for f in files[1:]:
        strip.elements.append(f.name)
    scene.frame_start, scene.frame_end = 1, len(files)
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = params.width, params.height, 100
    render.fps, render.fps_base = params.fps, 1.0
    if hasattr(render.image_settings, "media_type"):  # Blender 5: movies are a media type of their own
        render.image_settings.media_type = "VIDEO"
    render.image_settings.file_format = "FFMPEG"
    render.ffmpeg.format, render.ffmpeg.codec = "MPEG4", "H264"
    render.ffmpeg.constant_rate_factor = "HIGH"
    movie = out_dir / "orbit.mp4"
    render.filepath = str(movie.with_suffix(".tmp.mp4"))
    bpy.ops.render.render(animation=True)
    Path(render.filepath).replace(movie)
    for f in files:
        f.unlink()
    frames_dir.rmdir()
    record = {"version": VIDEO_VERSION, "params": dataclasses.asdict(params), "video": movie.name,
              "fps": params.fps, "blurred": list(params.blurred), "scene": str(scene_dir),
              "camera_centres": info["camera_centres"], "intrinsics": info["intrinsics"],
              "orbit_radius": float(np.linalg.norm(np.array(info["camera_centres"])[:, :2], axis=1).mean()),
              "blender_version": bpy.app.version_string}
    (out_dir / "video.json").write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--frames", type=int, default=VideoParams.frames)
    parser.add_argument("--fps", type=int, default=VideoParams.fps)
    parser.add_argument("--encode", nargs=2, metavar=("PARAMS_JSON", "SCENE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.encode:
        params = json.loads(args.encode[0])
        params["blurred"] = tuple(params["blurred"])
        _encode(Path(args.out_dir), VideoParams(**params), Path(args.encode[1]))
        return 0
    print(ensure_video(args.out_dir, VideoParams(frames=args.frames, fps=args.fps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
