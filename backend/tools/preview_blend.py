"""Previews from the command line, through the add-on's own code in bpy.

    python -m backend previews WORKSPACE [--engine WORKBENCH|EEVEE|CYCLES] [--percentage 50]

runs `python -m backend.tools.preview_blend ...` as its own process (bpy never
shares a process with torch or pycolmap): the workspace's cameras and mesh
are imported into an empty scene, the scene is rendered from every camera,
and the splats are rendered by a backend server this process starts, exactly
as the add-on asks for them. Writes WORKSPACE/previews/.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def bpy_missing() -> str | None:
    """What to do when this Python has no bpy (Set Up Backend's environment
    has none: Blender brings its own), or None when it has. Found without
    importing it here: bpy never shares a process with torch. The splat-only
    previews need it too, as the add-on's code composes every preview."""
    from importlib.util import find_spec

    try:
        found = find_spec("bpy") is not None
    except (ImportError, ValueError):  # a broken or half-imported bpy
        found = False
    if found:
        return None
    return (f"The previews render through Blender, and this Python ({sys.executable}) has no bpy: run them from "
            f"Blender's sidebar (Reconstruct > Previews > Render Previews), or install Blender as a module here: "
            f"pip install bpy==5.0.1 (needs Python 3.11; this is {sys.version_info.major}."
            f"{sys.version_info.minor}).")


def render_previews(workspace: Path, engine: str = "WORKBENCH", percentage: int = 50, samples: int = 16,
                    mesh: bool = True, splats: bool = True, mesh_colours: str = "texture") -> dict:
    """Run the previews in a bpy process; returns previews/metrics.json."""
    from backend.errors import ErrorCode, ReconstructError

    missing = bpy_missing()
    if missing:
        raise ReconstructError(ErrorCode.MISSING_DEPENDENCIES, missing)
    cmd = [sys.executable, "-m", "backend.tools.preview_blend", str(workspace), "--engine", engine,
           "--percentage", str(percentage), "--samples", str(samples)]
    cmd += [] if mesh else ["--no-mesh"]
    cmd += [] if splats else ["--no-splats"]
    cmd += ["--mesh-colours", mesh_colours]
    proc = subprocess.run(cmd, cwd=_REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.removeprefix("error: ") for ln in proc.stderr.splitlines() if ln.startswith("error:")] or \
            proc.stderr.splitlines()[-5:]
        raise ReconstructError(ErrorCode.STAGE_FAILED, f"Previews failed: {' '.join(lines)}",
                               "Check that the workspace holds a finished reconstruction (cameras and a mesh or "
                               "splats) and that bpy is installed in this environment.")
    return json.loads((Path(workspace) / "previews" / "metrics.json").read_text())


def report_lines(metrics: dict) -> list[str]:
    lines = []
    for source, mean in metrics["mean"].items():
        if mean["psnr"] is not None:
            lines.append(f"{source}: mean PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.3f}, "
                         f"coverage {100 * mean['coverage']:.0f}%")
    worst = metrics["cameras"][0]
    lines.append("worst: " + worst["camera"] + " (" + ", ".join(
        f"{s} {worst[s]['psnr']:.2f} dB" for s in metrics["mean"] if worst.get(s, {}).get("psnr") is not None) + ")")
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.tools.preview_blend")
    p.add_argument("workspace", type=Path)
    p.add_argument("--engine", default="WORKBENCH")
    p.add_argument("--percentage", type=int, default=50)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--no-mesh", action="store_true")
    p.add_argument("--no-splats", action="store_true")
    p.add_argument("--mesh-colours", choices=["texture", "vertex"], default="texture")
    args = p.parse_args(argv)

    try:
        import bpy
    except ImportError as exc:  # found but not loadable (another Python's build, missing system libraries)
        print(f"error: {bpy_missing() or f'bpy did not load ({exc}): the previews render through Blender.'}",
              file=sys.stderr)
        return 2
    import addon_utils  # only importable once bpy is

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True)
    from blender_addon.link import jobs
    from blender_addon.link.client import BackendClient
    from blender_addon.ui.preview_ops import BackendSplats
    from blender_addon.ui.previews import PreviewSession, job_cameras, run_to_end
    from blender_addon.importers.results import import_workspace, mesh_file, splats_file

    ws = args.workspace.resolve()
    mesh = not args.no_mesh and mesh_file(ws).is_file()
    splats = not args.no_splats and splats_file(ws).is_file()
    if not (mesh or splats):
        print(f"error: {ws} has neither a mesh nor splats to preview", file=sys.stderr)
        return 2
    bpy.context.scene.reconstruct.mesh_colors = args.mesh_colours.upper()
    collection = import_workspace(ws, "previews", bpy.context.scene, parts=("cameras", "mesh") if mesh else
                                  ("cameras",))
    source = None
    runner = jobs.Runner()
    if splats:
        runner.client = BackendClient(sys.executable)
        runner.client.start()
        source = BackendSplats(runner, ws)
    try:
        session = run_to_end(PreviewSession(bpy.context.scene, job_cameras(collection), ws, engine=args.engine,
                                            splats=source, render_scene=mesh, percentage=args.percentage,
                                            samples=args.samples))
    finally:
        runner.stop_backend()
    if session.state != "DONE":
        print(f"error: {session.message}", file=sys.stderr)
        return 1
    metrics = json.loads((ws / "previews" / "metrics.json").read_text())
    print(json.dumps({"cameras": len(metrics["cameras"]), "mean": metrics["mean"], "worst": metrics["worst"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
