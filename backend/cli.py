"""Command line: `python -m backend run|serve|demo`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from backend.errors import Cancelled, ReconstructError
from blender_addon.stages import STAGES as DECLARED
from backend.options import CAMERA_MODELS, QUALITY_PRESETS, STAGES, JobOptions


class TerminalEvents:
    """A progress bar per stage on stderr (a line per step when not a tty)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self._stage = None
        self._started = 0.0
        self._last_line = 0.0

    def progress(self, stage: str, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._started = stage, now
        bar = "#" * int(fraction * 30)
        line = f"{stage:<10} [{bar:<30}] {fraction * 100:5.1f}% {now - self._started:6.1f}s  {message}"
        done = fraction >= 1.0
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if done else ""))
        elif done or message == "starting" or now - self._last_line > 2.0:
            self.stream.write(line + "\n")
            self._last_line = now
        self.stream.flush()

    def warning(self, code: str, message: str, details: dict) -> None:
        self.stream.write(("\n" if self.tty else "") + f"warning: {message}\n")

    def log(self, message: str) -> None:
        self.stream.write(message + "\n")

    def stage_done(self, stage: str, artifacts: dict[str, str]) -> None:
        pass  # the progress bar already says "done"; paths are printed at the end


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quality", choices=list(QUALITY_PRESETS), default="balanced",
                   help="preset for image size and feature count (default: balanced)")
    p.add_argument("--max-image-size", type=int, help="longest side (px) used for features")
    p.add_argument("--max-features", type=int, dest="max_num_features", help="SIFT features per photo")
    p.add_argument("--sift-upsample", choices=["auto", "always", "never"],
                   help="SIFT on images doubled in size: auto = only below 1200 px (default)")
    p.add_argument("--camera-model", choices=CAMERA_MODELS, help="COLMAP camera model (default SIMPLE_RADIAL)")
    cameras = p.add_mutually_exclusive_group()
    cameras.add_argument("--single-camera", action="store_true", default=None,
                         help="all photos share one camera's intrinsics (default: when size and EXIF camera agree)")
    cameras.add_argument("--per-photo-camera", action="store_false", dest="single_camera",
                         help="each photo has its own intrinsics (zoom lenses, several cameras)")
    p.add_argument("--matcher", choices=["auto", "exhaustive", "sequential", "spatial"])
    p.add_argument("--mapper", choices=["incremental", "global"])
    p.add_argument("--undistort-max-size", type=int, help="longest side of undistorted images (0 = full)")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"])
    p.add_argument("--threads", type=int, dest="num_threads")
    p.add_argument("--dense-max-size", type=int, dest="dense_max_image_size",
                   help="longest side (px) of the images depth maps are computed at")
    p.add_argument("--num-sources", type=int, help="source views per depth map (default 6)")
    p.add_argument("--min-consistent", type=int, help="views that must agree on a fused point (default 2)")
    p.add_argument("--roi", type=_roi, help='region of interest: "cx,cy,cz,hx,hy,hz" (axis-aligned centre and '
                   'half sizes) or JSON {"center", "half_size", "rotation"}; default: the sparse points\' bounds')
    p.add_argument("--mesh-depth", type=int, help="Poisson octree depth (default: from the point spacing)")
    p.add_argument("--face-budget", type=int, help="simplify the mesh to at most this many triangles")
    p.add_argument("--dense-device", choices=["auto", "cuda", "cpu"], help="where depth maps are computed")
    p.add_argument("--splat-steps", type=int, dest="splat_steps",
                   help="Gaussian splat training steps (default from --quality: 3000/7000/30000)")
    p.add_argument("--splat-size", type=int, dest="splat_max_image_size",
                   help="longest side (px) of the photos splats are trained on")
    p.add_argument("--sh-degree", type=int, choices=[0, 1, 2, 3], help="splat colour SH degree (default 3)")
    p.add_argument("--strategy", choices=["default", "mcmc"], help="splat densification (default: gsplat's default)")
    p.add_argument("--max-splats", type=int, help="upper bound on the number of splats (the MCMC budget)")
    p.add_argument("--holdout-every", type=int, help="hold every n-th photo out of splat training to score it "
                   "(default 8; 0 = train on all)")
    p.add_argument("--splat-device", choices=["auto", "cuda", "cpu"], help="where splats are trained")
    p.add_argument("--checkpoint-seconds", type=float, help="how often splat training saves a checkpoint (default 60)")
    p.add_argument("--force", choices=STAGES, help="rerun this stage and those after it even if cached")
    p.add_argument("--new", action="store_true", help="start the workspace over: remove its results (only the "
                   "files it made) when it was made for other photos")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), metavar="STAGE",
                   help="run these stages and the ones they need (default: all): " +
                   "; ".join(f"{s.name}: {s.description}" for s in DECLARED))


def _roi(text: str) -> dict:
    try:
        if text.lstrip().startswith("{"):
            return json.loads(text)
        values = [float(v) for v in text.split(",")]
        if len(values) != 6:
            raise ValueError("six numbers")
        return {"center": values[:3], "half_size": values[3:]}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a box ({exc}): {text!r}") from None


def options_from_args(args: argparse.Namespace) -> JobOptions:
    sfm = {k: getattr(args, k) for k in ("max_image_size", "max_num_features", "sift_upsample", "camera_model",
                                         "single_camera",
                                         "matcher", "mapper", "undistort_max_size", "device", "num_threads")
           if getattr(args, k) is not None}
    dense = {k: getattr(args, a) for k, a in (("max_image_size", "dense_max_image_size"),
                                              ("num_sources", "num_sources"), ("min_consistent", "min_consistent"),
                                              ("roi", "roi"), ("mesh_depth", "mesh_depth"),
                                              ("face_budget", "face_budget"), ("device", "dense_device"))
             if getattr(args, a) is not None}
    splats = {k: getattr(args, a) for k, a in (("steps", "splat_steps"), ("max_image_size", "splat_max_image_size"),
                                               ("sh_degree", "sh_degree"), ("strategy", "strategy"),
                                               ("max_splats", "max_splats"), ("holdout_every", "holdout_every"),
                                               ("device", "splat_device"), ("checkpoint_seconds", "checkpoint_seconds"))
              if getattr(args, a) is not None}
    return JobOptions.from_dict({"quality": args.quality, "sfm": sfm, "dense": dense, "splats": splats,
                                 "force": args.force})


def cmd_run(args: argparse.Namespace) -> int:
    from backend.pipeline import run_job

    events = TerminalEvents()
    # A relative path on the command line means the shell's folder, as users
    # expect; the protocol refuses one (the server's folder means nothing).
    # An empty one is refused here too.
    workspace = os.path.abspath(os.path.expanduser(args.workspace)) if args.workspace.strip() else ""
    result = run_job(args.photos, workspace, options_from_args(args), events, stages=tuple(args.stages),
                     start_over=args.new)
    s = result.summary
    if s["registered_images"]:
        print(f"registered {s['registered_images']}/{s['total_images']} photos, {s['num_points']} points, "
              f"mean reprojection error {s['mean_reprojection_error']:.3f} px, "
              f"mean track length {s['mean_track_length']:.2f}")
    if s["unregistered"]:
        print(f"not registered: {', '.join(s['unregistered'])}")
    dense = s["dense"]
    if dense["dense_points"] is not None:
        print(f"dense: {dense['depth_maps']} depth maps at {dense['depth_map_size'][0]} px, "
              f"{dense['dense_points']} points -> {result.artifacts['fusion']}")
    if dense["mesh_faces"] is not None:
        print(f"mesh: {dense['mesh_faces']} faces -> {result.artifacts['mesh']} (and .glb)")
    splats = s["splats"]
    if splats["num_splats"] is not None:
        score = f", held-out PSNR {splats['psnr']:.2f} dB, SSIM {splats['ssim']:.3f}" if splats["psnr"] else ""
        print(f"splats: {splats['num_splats']} after {splats['steps']} steps at {splats['image_size'][0]} px"
              f"{score} -> {result.artifacts['splats_ply']}")
    print(f"ran: {', '.join(result.ran) or 'nothing (all stages up to date)'}")
    print(f"summary: {result.artifacts['summary']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.server import serve

    return serve(max_frame_bytes=args.max_frame_bytes)


def cmd_previews(args: argparse.Namespace) -> int:
    from backend.preview_blend import render_previews, report_lines

    metrics = render_previews(args.workspace, args.engine, args.percentage, args.samples, not args.no_mesh,
                              not args.no_splats)
    print(f"{len(metrics['cameras'])} previews -> {args.workspace}/previews (contact_sheet.png, metrics.json)")
    for line in report_lines(metrics):
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo import run_demo

    return run_demo(args.out, quality=args.quality, scene=args.scene)


def main(argv: list[str] | None = None) -> int:
    from blender_addon.protocol import DEFAULT_MAX_FRAME_BYTES, __version__

    parser = argparse.ArgumentParser(prog="python -m backend", description="Photos to 3D: the compute backend.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="reconstruct a folder of photos into a workspace")
    run.add_argument("photos", help="folder of photos (read only, never modified)")
    run.add_argument("--workspace", required=True, help="folder for the results (created if needed)")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    serve = sub.add_parser("serve", help="serve the Blender add-on over stdin/stdout")
    serve.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    serve.set_defaults(func=cmd_serve)
    previews = sub.add_parser("previews", help="render the mesh (through bpy) and the splats from every camera "
                              "beside its photo; scores in WORKSPACE/previews/metrics.json")
    previews.add_argument("workspace", help="a finished workspace")
    previews.add_argument("--engine", choices=["WORKBENCH", "EEVEE", "CYCLES"], default="WORKBENCH")
    previews.add_argument("--percentage", type=int, default=50, help="preview size, %% of each photo's")
    previews.add_argument("--samples", type=int, default=16, help="EEVEE / Cycles samples")
    previews.add_argument("--no-mesh", action="store_true", help="splats only")
    previews.add_argument("--no-splats", action="store_true", help="mesh only")
    previews.set_defaults(func=cmd_previews)
    demo = sub.add_parser("demo", help="render the synthetic scene, reconstruct it, report against ground truth")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--quality", choices=list(QUALITY_PRESETS), default="balanced")
    demo.add_argument("--scene", help="where the synthetic scene is (re)used (default: OUT/scene)")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OSError as exc:  # anything the stages did not already explain
        from backend.errors import file_error

        exc = file_error(exc, args.command)
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    except ReconstructError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        if exc.details and "log_tail" in exc.details:
            print(exc.details["log_tail"], file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("\ncancelled: finished stages are kept; run the same command again to resume.", file=sys.stderr)
        return 130
