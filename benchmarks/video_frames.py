"""Issue 18: how long decoding a video and choosing its frames takes, for a 1080p, 30 s,
30 fps H.264 video (900 frames) on this machine: pass one (decode every frame, measure
sharpness and change of view), pass two (decode again, write the kept frames as JPEGs).

The video is made here with PyAV's libx264: a camera panning across a large textured image
(a stand-in for a walk: every frame new content, the decoder's real work), with a few frames
smeared as by a jerk of the hand. Results: benchmarks/results/video_frames.{md,json}.

    .venv/bin/python benchmarks/video_frames.py
"""
from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, RESULTS, write_report
from backend.tools.synthetic_video import smear
from backend.video import frames as video

WIDTH, HEIGHT, FPS, SECONDS = 1920, 1080, 30, 30
BLURRED = (100, 101, 400, 650)


def make_video(path: Path) -> None:
    import av
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (270, 1200, 3), dtype=np.uint8)  # blobs of texture, scaled up smoothly
    world = np.asarray(Image.fromarray(small).resize((9600, HEIGHT), Image.Resampling.BICUBIC))
    n = FPS * SECONDS
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for i in range(n):
            x = int((world.shape[1] - WIDTH) * i / (n - 1))
            frame = world[:, x:x + WIDTH]
            if i in BLURRED:
                frame = smear(frame, 41)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def main() -> None:
    cache = REPO / ".cache" / "benchmarks"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "pan_1080p_30s.mp4"
    if not path.exists():
        started = time.perf_counter()
        make_video(path)
        print(f"made {path} in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    chosen = video.select_frames(path, 0, lambda f, m: None)
    select_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        written = video.write_frames(path, chosen, Path(out), lambda f, m: None)
        write_s = time.perf_counter() - started
    result = {"video": f"{WIDTH}x{HEIGHT}, {FPS} fps, {SECONDS} s, H.264 ({path.stat().st_size / 2**20:.0f} MB)",
              "decoded": chosen.decoded, "kept": len(written), "target": chosen.target,
              "blurred_found": chosen.blurred, "blurred_inserted": list(BLURRED),
              "select_seconds": round(select_s, 2), "write_seconds": round(write_s, 2),
              "total_seconds": round(select_s + write_s, 2),
              "decode_fps": round(chosen.decoded / select_s, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU only)"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "video_frames.json").write_text(json.dumps(result, indent=1))
    write_report(RESULTS / "video_frames.md", [
        "# Video frames: decode and choose (issue 18)", "",
        f"{result['video']} on {result['machine']}.", "",
        "| step | seconds |", "|---|---|",
        f"| pass one: decode {chosen.decoded} frames, measure sharpness and change | {result['select_seconds']} |",
        f"| pass two: decode again, write {len(written)} JPEGs at full size | {result['write_seconds']} |",
        f"| total | {result['total_seconds']} |", "",
        f"Decoding and measuring ran at {result['decode_fps']} frames/s; peak memory {result['peak_rss_mb']} MB. "
        f"Blurred frames inserted {list(BLURRED)}, found {chosen.blurred}, none kept: "
        f"{not set(BLURRED) & {m.index for m in chosen.kept}}.", ""])


if __name__ == "__main__":
    main()
