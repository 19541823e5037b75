"""The demo: render the synthetic scene (once), reconstruct it (cameras,
dense points, textured mesh, splats), and report how close each is to the ground
truth (splats: PSNR and SSIM on the photos held out of their training)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from blender_addon.shared.layout import Layout
from backend.cli import TerminalEvents
from backend.tools.evaluate import compare_poses, evaluate_synthetic
from backend.options import JobOptions
from backend.job.pipeline import run_job
from backend.tools.preview_blend import render_previews, report_lines
from backend.tools.synthetic_scene import SceneParams, ensure_scene

# Without a GPU the demo trains splats small (a few minutes on 2 cores); with
# one, the quality preset's steps at the photos' full 640 px.
CPU_SPLATS = {"steps": 800, "max_image_size": 128, "max_splats": 20_000}


def splat_options() -> dict:
    import torch

    return {} if torch.cuda.is_available() else dict(CPU_SPLATS)


def run_demo(out: str | Path, quality: str = "balanced", scene: str | Path | None = None) -> int:
    out = Path(out).resolve()
    scene_dir = Path(scene).resolve() if scene else out / "scene"
    print(f"1/4 synthetic scene -> {scene_dir} (rendered with Cycles on first use, then reused)")
    ensure_scene(scene_dir, SceneParams())
    print(f"2/4 reconstruction -> {out / 'workspace'}")
    result = run_job(scene_dir / "images", out / "workspace",
                     JobOptions.from_dict({"quality": quality, "splats": splat_options()}), TerminalEvents())
    summary = result.summary
    errors = compare_poses(Layout(out / "workspace").model, scene_dir / "gt_colmap")
    geometry = evaluate_synthetic(out / "workspace", scene_dir)
    report = {"registered_images": summary["registered_images"], "total_images": summary["total_images"],
              "mean_reprojection_error": summary["mean_reprojection_error"], "num_points": summary["num_points"],
              "pose_errors": errors.as_dict(), "geometry": geometry, "dense": summary["dense"],
              "splats": summary["splats"],
              "stage_seconds": summary["stage_seconds"], "workspace": str(result.workspace)}
    blend = out / "demo.blend"
    print(f"3/4 Blender scene -> {blend}")
    subprocess.run([sys.executable, "-m", "backend.tools.demo_blend", str(out / "workspace"), str(blend), "demo"],
                   check=True, cwd=Path(__file__).resolve().parents[2])
    report["blend"] = str(blend)
    # Previews no larger than the photos the splats trained on (128 px on the CPU: 20%) show them as trained.
    percentage = min(50, round(100 * summary["splats"]["image_size"][0] / SceneParams().width))
    print(f"4/4 previews: the mesh (Workbench) and the splats from every camera, beside its photo, at {percentage}%")
    metrics = render_previews(out / "workspace", percentage=percentage)
    report["previews"] = {"mean": metrics["mean"], "worst": metrics["cameras"][0],
                          "contact_sheet": str(out / "workspace" / metrics["contact_sheet"])}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print()
    print("Demo report (synthetic scene, ground truth known)")
    print(f"  registered photos      {summary['registered_images']}/{summary['total_images']}")
    print(f"  sparse points          {summary['num_points']}")
    print(f"  reprojection error     {summary['mean_reprojection_error']:.3f} px (mean)")
    print(f"  camera centre error    {errors.median_centre_error:.4f} median, {errors.max_centre_error:.4f} max "
          f"(scene units; {100 * errors.relative_median_centre_error:.3f}% of the camera radius "
          f"{errors.scene_radius:.2f})")
    print(f"  camera rotation error  {errors.median_rotation_error_deg:.3f} deg median, "
          f"{errors.max_rotation_error_deg:.3f} deg max")
    dense, mesh = geometry["dense"], geometry["mesh"]
    print(f"  dense points           {summary['dense']['dense_points']} ({dense['num_points']} near the object)")
    print(f"  dense F-score          {dense['f_score']:.3f} at {geometry['threshold']:.4f} (1% of the object's "
          f"diagonal): accuracy {dense['accuracy']:.3f}, completeness {dense['completeness']:.3f}; "
          f"{geometry['dense_half']['f_score']:.3f} at 0.5%")
    print(f"  mesh                   {mesh['faces']} faces, mean distance to the true surface "
          f"{100 * mesh['mean_distance_fraction']:.3f}% of the diagonal, farthest "
          f"{100 * mesh['max_distance_fraction']:.2f}%")
    texture = summary["texture"]
    print(f"  texture                {texture['size']} px atlas, {texture['charts']} charts from "
          f"{texture['photos_used']} photos, {100 * texture['faces_seen']:.1f}% of the faces seen, "
          f"{texture['seconds']:.0f} s")
    splats = summary["splats"]
    print(f"  splats                 {splats['num_splats']} after {splats['steps']} steps at "
          f"{splats['image_size'][0]}x{splats['image_size'][1]} px on {summary['device']['splats']}: held-out "
          f"PSNR {splats['psnr']:.2f} dB, SSIM {splats['ssim']:.3f} ({len(splats['held_out'])} photos, every 8th)")
    print("  stage seconds          " + ", ".join(f"{k} {v:.1f}" for k, v in summary["stage_seconds"].items()))
    print(f"  Blender scene          {blend} (cameras, sparse and dense points, textured mesh, splats, imported by the add-on)")
    for line in report_lines(metrics):
        print(f"  previews               {line}")
    print(f"  contact sheet          {report['previews']['contact_sheet']}")
    print(f"  report                 {out / 'report.json'}")
    return 0
