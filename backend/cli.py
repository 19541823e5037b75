"""Command line: `python -m backend run|serve|demo`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from dataclasses import fields
from typing import Literal

from backend.errors import Cancelled, ReconstructError
from blender_addon.shared import stages as declared
from backend.options import CAMERA_MODELS, OPTION_GROUPS, QUALITY_PRESETS, JobOptions, field_docs


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


def _texture_size(text: str) -> int:
    """--texture-size: a number of pixels, or 2k / 4k / 8k."""
    text = text.strip().lower()
    if text.endswith("k") and text[:-1].isdigit():
        return int(text[:-1]) * 1024
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give pixels (4096) or 2k, 4k, 8k") from None


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """One flag per option field, made from the option dataclasses: their
    types give the parsing and the choices, their docstrings the help, their
    metadata the flag where the plain name would collide across groups."""
    p.add_argument("--quality", choices=list(QUALITY_PRESETS), default="balanced",
                   help="preset for image sizes, feature counts, face budget and splat steps (default: balanced)")
    for group, cls_ in OPTION_GROUPS.items():
        docs, hints = field_docs(cls_), typing.get_type_hints(cls_)
        section = p.add_argument_group(f"{group} options", (cls_.__doc__ or "").strip())
        for f in fields(cls_):
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            dest = f"{group}.{f.name}"
            preset = [f"{q} {v.get(group, {}).get(f.name)}" for q, v in QUALITY_PRESETS.items() if f.name in v.get(group, {})]
            default = f"from --quality: {', '.join(preset)}" if preset else \
                ("automatic" if f.default is None else f"{f.default}")
            text = f"{docs.get(f.name, '')} (default: {default})".strip().replace("%", "%%")
            if "flag_false" in f.metadata:  # bool | None: two flags, neither given = automatic
                both = section.add_mutually_exclusive_group()
                both.add_argument(flag, action="store_true", dest=dest, default=None, help=text)
                both.add_argument(f.metadata["flag_false"], action="store_false", dest=dest,
                                  help=f"the opposite of {flag}")
                continue
            kind = hints[f.name]
            choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
            if f.name == "camera_model":
                choices = CAMERA_MODELS
            parse = {int: int, float: float}.get(kind, _roi if f.name == "roi" else str)
            if dest == "texture.size":
                parse = _texture_size
            metavar = None if choices else {int: "N", float: "X"}.get(kind, "BOX" if f.name == "roi" else "TEXT")
            section.add_argument(flag, dest=dest, type=parse, choices=choices, metavar=metavar, help=text)
    p.add_argument("--force", choices=declared.NAMES, help="rerun this stage and those after it even if cached")
    p.add_argument("--new", action="store_true", help="start the workspace over: remove its results (only the "
                   "files it made) when it was made for other photos")
    p.add_argument("--stages", nargs="+", choices=declared.NAMES, default=list(declared.NAMES), metavar="STAGE",
                   help="run these stages and the ones they need (default: all): " +
                   "; ".join(f"{s.name}: {s.description}" for s in declared.STAGES))


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
    """The flags given, as the plain data every job's options come from; the
    same validator as the protocol's checks them."""
    groups = {group: {f.name: getattr(args, f"{group}.{f.name}") for f in fields(cls_)
                      if getattr(args, f"{group}.{f.name}") is not None}
              for group, cls_ in OPTION_GROUPS.items()}
    return JobOptions.from_dict({"quality": args.quality, **groups, "force": args.force})


def cmd_run(args: argparse.Namespace) -> int:
    from backend.job.pipeline import run_job

    events = TerminalEvents()
    # A relative path on the command line means the shell's folder, as users
    # expect; the protocol refuses one (the server's folder means nothing).
    # An empty one is refused here too.
    workspace = os.path.abspath(os.path.expanduser(args.workspace)) if args.workspace.strip() else ""
    result = run_job(args.photos, workspace, options_from_args(args), events, stages=tuple(args.stages),
                     start_over=args.new, masks=args.masks)
    s = result.summary
    if s.get("video"):
        v = s["video"]
        print(f"video: {v['decoded']} frames decoded, {len(v['blurred'])} blurred left out, {v['kept']} kept "
              f"({v['first_time']:.1f}-{v['last_time']:.1f} s) -> {result.artifacts.get('frames', '')}")
    if s["registered_images"]:
        print(f"registered {s['registered_images']}/{s['total_images']} photos, {s['num_points']} points, "
              f"mean reprojection error {s['mean_reprojection_error']:.3f} px, "
              f"mean track length {s['mean_track_length']:.2f}")
    if s["unregistered"]:
        print(f"not registered: {', '.join(s['unregistered'])}")
    registration = s.get("registration") or {}
    if len(registration.get("attempts", [])) > 1:
        print(f"registration: {registration['line']}")
        for a in registration["attempts"]:
            print(f"  {'kept' if a['kept'] else 'dropped'}: {a['label']}, {a['registered']}/{s['total_images']} "
                  f"in {a['seconds']:.1f} s ({a['verdict']})")
    frame = s.get("frame") or {}
    if frame.get("summary"):
        print(f"frame: {frame['summary']}")
    dense = s["dense"]
    if dense["dense_points"] is not None:
        print(f"dense: {dense['depth_maps']} depth maps at {dense['depth_map_size'][0]} px, "
              f"{dense['dense_points']} points -> {result.artifacts['fusion']}")
    if dense["mesh_faces"] is not None:
        print(f"mesh: {dense['mesh_faces']} faces -> {result.artifacts['mesh']} (and .glb)")
    texture = s.get("texture") or {}
    if texture.get("size"):
        print(f"texture: {texture['size']} px atlas, {texture['charts']} charts from {texture['photos_used']} photos, "
              f"{100 * texture['faces_seen']:.0f}% of the faces seen -> {result.artifacts['textured_obj']} "
              f"(and .glb)")
    splats = s["splats"]
    if splats["num_splats"] is not None:
        score = f", held-out PSNR {splats['psnr']:.2f} dB, SSIM {splats['ssim']:.3f}" if splats["psnr"] else ""
        start = f", started at {splats['started_from']}" if splats.get("started_from") else ""
        print(f"splats: {splats['num_splats']} after {splats['steps']} steps at {splats['image_size'][0]} px{start}"
              f"{score} -> {result.artifacts['splats_ply']}")
    print(f"ran: {', '.join(result.ran) or 'nothing (all stages up to date)'}")
    print(f"summary: {result.artifacts['summary']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.job.server import serve

    return serve(max_frame_bytes=args.max_frame_bytes)


def cmd_previews(args: argparse.Namespace) -> int:
    from backend.tools.preview_blend import render_previews, report_lines

    metrics = render_previews(args.workspace, args.engine, args.percentage, args.samples, not args.no_mesh,
                              not args.no_splats, args.mesh_colours)
    print(f"{len(metrics['cameras'])} previews -> {args.workspace}/previews (contact_sheet.png, metrics.json)")
    for line in report_lines(metrics):
        print(line)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """What Check Backend reports, on a terminal: versions, device, and per
    stage where it will run and why."""
    from backend.job.device import describe_device, missing_packages, package_versions, stage_devices

    missing = missing_packages()
    if missing:
        print(f"error: this environment ({sys.executable}) is missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    device = describe_device()
    versions = ", ".join(f"{name} {version}" for name, version in package_versions().items() if version)
    print(f"backend ready on {device['type']}: {device['name']} ({versions})")
    for stage, where in stage_devices(args.device).items():
        print(where.line(stage))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from backend.tools.demo import run_demo

    return run_demo(args.out, quality=args.quality, scene=args.scene)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run_command(args)


def build_parser() -> argparse.ArgumentParser:
    from blender_addon.shared.protocol import DEFAULT_MAX_REQUEST_BYTES, __version__

    parser = argparse.ArgumentParser(prog="python -m backend", description="Photos to 3D: the compute backend.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="reconstruct a folder of photos, or a video, into a workspace")
    run.add_argument("photos", help="folder of photos, or a video file (.mp4, .mov, ...): read only, never modified")
    run.add_argument("--workspace", required=True, help="folder for the results (created if needed)")
    run.add_argument("--masks", help="folder of masks, one PNG per photo named photo.jpg.png, black where the "
                     "photo is to be ignored (features, depth maps and dense points skip it)")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    serve = sub.add_parser("serve", help="serve the Blender add-on over stdin/stdout")
    serve.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                       help="largest request accepted, bytes (default: %(default)s)")
    serve.set_defaults(func=cmd_serve)
    previews = sub.add_parser("previews", help="render the mesh (through bpy) and the splats from every camera "
                              "beside its photo; scores in WORKSPACE/previews/metrics.json")
    previews.add_argument("workspace", help="a finished workspace")
    previews.add_argument("--engine", choices=["WORKBENCH", "EEVEE", "CYCLES"], default="WORKBENCH")
    previews.add_argument("--percentage", type=int, default=50, help="preview size, %% of each photo's")
    previews.add_argument("--samples", type=int, default=16, help="EEVEE / Cycles samples")
    previews.add_argument("--no-mesh", action="store_true", help="splats only")
    previews.add_argument("--no-splats", action="store_true", help="mesh only")
    previews.add_argument("--mesh-colours", choices=["texture", "vertex"], default="texture",
                          help="a textured mesh shows its photo texture (default) or its vertex colours")
    previews.set_defaults(func=cmd_previews)
    check = sub.add_parser("check", help="report the versions, the device, and where each stage will run and why")
    check.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", help="render the synthetic scene, reconstruct it, report against ground truth")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--quality", choices=list(QUALITY_PRESETS), default="balanced")
    demo.add_argument("--scene", help="where the synthetic scene is (re)used (default: OUT/scene)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _run_command(args: argparse.Namespace) -> int:
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
