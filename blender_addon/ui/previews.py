"""Camera-aligned previews: render the reconstruction from each recovered
camera, put it beside the camera's photo, and score the match.

A PreviewSession works through a job's cameras one step per call of
`tick()`: a step is at most one Blender render (the scene as the user has
it, from that camera, at its photo's resolution and pixel aspect), so the
timer that drives it never holds the UI for longer than one render, and a
cancel is seen before the next. Where the job has splats their exact image
comes from a SplatSource: the backend's render call (preview_ops.BackendSplats,
used by the sidebar and by `python -m backend previews` alike).

Per camera it writes previews/<camera>.png (photo | render | difference heat
map, a row per source) and stores the scores on the camera object; at the
end previews/contact_sheet.png (worst first) and previews/metrics.json.

The scene render leaves out the job's point clouds and splat display (they
are viewport aids; the splats get their own exact render) and uses a
transparent film (coverage) and the Standard view transform (the photos'
colours); every setting it touches is restored afterwards.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from ..shared import preview_math, protocol
from ..shared.camera_math import blender_matrix_to_colmap, render_intrinsics
from ..importers.cameras import IMAGE_NAME_KEY, apply_camera_resolution

PREVIEWS_DIR = "previews"
METRICS_FILE = "metrics.json"
CONTACT_SHEET = "contact_sheet.png"
KEYS = {("mesh", "psnr"): "reconstruct_psnr", ("mesh", "ssim"): "reconstruct_ssim",
        ("mesh", "coverage"): "reconstruct_coverage", ("splats", "psnr"): "reconstruct_splat_psnr",
        ("splats", "ssim"): "reconstruct_splat_ssim", ("splats", "coverage"): "reconstruct_splat_coverage"}
_WORK_IMAGE = "reconstruct preview work"
# The render engines by the names the sidebar uses; EEVEE's identifier was
# BLENDER_EEVEE_NEXT in Blender 4.2-4.4 and is BLENDER_EEVEE again from 4.5.
ENGINES = {"WORKBENCH": ("BLENDER_WORKBENCH",), "EEVEE": ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),
           "CYCLES": ("CYCLES",)}


def set_engine(render, engine: str) -> None:
    """Make `engine` (a key of ENGINES) the render engine, by this Blender's name for it."""
    for name in ENGINES[engine]:
        try:
            render.engine = name
            return
        except TypeError:  # not this Blender's name for it
            continue
    raise ValueError(f"This Blender has no {engine} render engine.")


def job_cameras(collection: bpy.types.Collection) -> list[bpy.types.Object]:
    """The recovered cameras of a job's collection, by name."""
    return sorted((o for o in collection.all_objects if o.type == "CAMERA" and IMAGE_NAME_KEY in o),
                  key=lambda o: o.name)


def job_collection(obj: bpy.types.Object) -> bpy.types.Collection | None:
    """The job collection (tagged with its workspace) an object belongs to."""
    for collection in bpy.data.collections:
        if "reconstruct_workspace" in collection and obj.name in collection.all_objects:
            return collection
    return None


def camera_pixels(scene, cam: bpy.types.Object) -> dict:
    """The render camera of the protocol's render_splats request for `cam` as
    Blender renders it at the scene's current (percentage-scaled) resolution:
    COLMAP's world-to-camera R, t and the pinhole K in pixels of that frame,
    converted here, on the add-on's side, once (camera_math)."""
    fx, fy, cx, cy, width, height = render_intrinsics(scene.render, cam.data)
    # The backend renders the splats in the workspace frame: the camera's pose
    # relative to the job's parent empty (Set Scale / Set Ground move only that).
    from ..importers.frame import origin_of, to_workspace

    matrix = to_workspace(origin_of(cam.parent)) @ np.array(cam.matrix_world, np.float64)
    if np.linalg.svd(matrix[:3, :3], compute_uv=False).min() <= 1e-12 * max(1.0, np.abs(matrix[:3, :3]).max()):
        raise ValueError(f"camera {cam.name} has a zero scale: it has no direction to look in")
    try:
        R, t = blender_matrix_to_colmap(matrix)
    except ValueError as exc:
        raise ValueError(f"camera {cam.name}: {exc}") from None
    return {"R": R.tolist(), "t": t.tolist(), "width": width, "height": height, "fx": fx, "fy": fy,
            "cx": cx, "cy": cy}


def fit_render(camera: dict, max_pixels: int = protocol.MAX_RENDER_PIXELS,
               max_side: int = protocol.MAX_RENDER_SIDE) -> dict:
    """`camera` (a render camera, as camera_pixels makes it) scaled down to the
    largest size the backend renders: at most `max_pixels` pixels and
    `max_side` on a side, the aspect kept as well as whole pixels allow. Size
    and K scale together, x by new width / width and y by new height / height,
    so the frame [0, W] x [0, H] maps onto the smaller one and the same view is
    rendered. A camera that fits is returned as it is."""
    width, height = camera["width"], camera["height"]
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), max_side / width, max_side / height)
    if scale >= 1.0:
        return camera
    # The 1e-9: 12000 * (8192 / 12000) is 8191.999...; the loop undoes any overshoot.
    w = max(1, min(max_side, math.floor(width * scale + 1e-9)))
    h = max(1, min(max_side, math.floor(height * scale + 1e-9)))
    while w * h > max_pixels:
        w, h = (w - 1, h) if w / width >= h / height else (w, h - 1)
    sx, sy = w / width, h / height
    return {**camera, "width": w, "height": h, "fx": camera["fx"] * sx, "cx": camera["cx"] * sx,
            "fy": camera["fy"] * sy, "cy": camera["cy"] * sy}


def resample(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, C] resized to [height, width, C] bilinearly, pixel centres aligned
    (the frame [0, W] x [0, H] maps onto [0, width] x [0, height], as
    fit_render's K does), edges clamped. Keeps a float image's dtype."""
    def axis(n_out: int, n_in: int):
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(np.intp)
        return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(image.dtype)

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    rows = image[y0] * (1 - fy)[:, None, None]
    rows += image[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None]
    out += rows[:, x1] * fx[None, :, None]
    return out


def image_pixels(image: bpy.types.Image) -> np.ndarray:
    """[H, W, 4] float pixels of a Blender image, top row first (as stored: sRGB
    values for 8-bit images)."""
    w, h = image.size
    buf = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(buf)
    return buf.reshape(h, w, 4)[::-1].astype(np.float64)


def load_png(path: Path) -> np.ndarray:
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        return image_pixels(image)
    finally:
        bpy.data.images.remove(image)


def save_png(array: np.ndarray, path: Path, name: str = "reconstruct preview") -> bpy.types.Image:
    """Write [H, W, 3|4] 0..1 as an 8-bit PNG; returns the (kept) Blender image."""
    h, w = array.shape[:2]
    if array.shape[2] == 3:
        array = np.concatenate([array, np.ones((h, w, 1))], -1)
    image = bpy.data.images.get(name) or bpy.data.images.new(name, w, h, alpha=True)
    if tuple(image.size) != (w, h):
        image.scale(w, h)
    image.pixels.foreach_set(np.ascontiguousarray(np.clip(array[::-1], 0, 1), np.float32).ravel())
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    return image


def photo_of(cam: bpy.types.Object) -> bpy.types.Image | None:
    backgrounds = cam.data.background_images
    return backgrounds[0].image if len(backgrounds) and backgrounds[0].image else None


class SplatSource:
    """Splat renders for the session: `request(name, camera)` (a camera from
    camera_pixels) then `poll(name)` -> RGBA [H, W, 4] at the camera's size
    (colour composited over the training background, alpha = coverage) once it
    is there, else None."""

    def request(self, name: str, camera: dict) -> None: ...
    def poll(self, name: str) -> np.ndarray | None: ...


def splat_rgba(image_u8: np.ndarray, background) -> np.ndarray:
    """The backend's premultiplied RGBA render -> colour over `background`, alpha."""
    rgba = np.asarray(image_u8, np.float64) / 255
    rgb = rgba[..., :3] + (1 - rgba[..., 3:]) * np.asarray(background, np.float64)
    return np.concatenate([rgb, rgba[..., 3:]], -1)


@dataclass
class CameraResult:
    camera: str
    photo: str
    scores: dict = field(default_factory=dict)  # source ("mesh", "splats") -> {psnr, ssim, coverage}
    preview: str = ""

    def sort_key(self) -> float:
        """Worst first: the lowest PSNR over the sources (a camera that covers nothing first of all)."""
        values = [s["psnr"] for s in self.scores.values() if s.get("psnr") is not None]
        return min(values) if values else -math.inf


class PreviewSession:
    def __init__(self, scene: bpy.types.Scene, cameras: list[bpy.types.Object], workspace: Path,
                 engine: str = "WORKBENCH", splats: SplatSource | None = None, render_scene: bool = True,
                 percentage: int = 100, samples: int = 16, hide: list[bpy.types.Object] | None = None):
        if not cameras:
            raise ValueError("no recovered cameras to preview")
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
        self.scene_name = scene.name
        self.cameras = [c.name for c in cameras]
        self.workspace = Path(workspace)
        self.out = self.workspace / PREVIEWS_DIR
        # Written here and moved into place when every camera is done: a cancelled
        # or failed session leaves the last finished previews as they were.
        self.work = self.workspace / (PREVIEWS_DIR + ".partial")
        self.engine, self.splats, self.render_scene = engine, splats, render_scene
        self.percentage, self.samples = percentage, samples
        self.hide = [o.name for o in (hide if hide is not None else _aids(scene))]
        self.index = 0
        self.results: list[CameraResult] = []
        self.state = "RUNNING"
        self.message = ""
        self.renders_per_tick: list[int] = []
        self.tick_seconds: list[float] = []
        self._scene_rgba: np.ndarray | None = None
        self._requested = False
        self._saved: dict | None = None

    @property
    def scene(self) -> bpy.types.Scene:
        return bpy.data.scenes[self.scene_name]

    @property
    def done(self) -> bool:
        return self.state != "RUNNING"

    @property
    def progress(self) -> float:
        return self.index / len(self.cameras)

    # One step ---------------------------------------------------------------
    def tick(self) -> None:
        """Advance by at most one render; call again until `done`."""
        if self.done:
            return
        started, renders = time.perf_counter(), 0
        try:
            if self._saved is None:
                shutil.rmtree(self.work, ignore_errors=True)
                self.work.mkdir(parents=True)
                self._saved = self._save_settings()  # restored by stop(), whatever happens next
                self._apply_settings()
            cam = bpy.data.objects[self.cameras[self.index]]
            self.message = f"{cam.name} ({self.index + 1}/{len(self.cameras)})"
            if not self._requested:
                self._aim(cam)
                if self.splats is not None:
                    self.splats.request(cam.name, camera_pixels(self.scene, cam))
                self._requested = True
            if self.render_scene and self._scene_rgba is None:
                self._scene_rgba = self._render(cam)
                renders = 1
                return
            splat = self.splats.poll(cam.name) if self.splats is not None else None
            if self.splats is not None and splat is None:
                return  # the backend is still rendering: look again next tick
            self._finish_camera(cam, splat)
            if self.index == len(self.cameras):
                self._finish()
        except Exception as exc:
            self.stop("ERROR", f"Previews failed: {exc}")
            raise
        finally:
            self.renders_per_tick.append(renders)
            self.tick_seconds.append(time.perf_counter() - started)

    def cancel(self) -> None:
        self.stop("CANCELLED", "Previews cancelled; the scene is as it was.")

    def stop(self, state: str, message: str) -> None:
        if self._saved is not None:
            self._restore(self._saved)
            self._saved = None
        if (work_image := bpy.data.images.get(_WORK_IMAGE)) is not None:
            bpy.data.images.remove(work_image)
        shutil.rmtree(self.work, ignore_errors=True)
        self.state, self.message = state, message

    # The work -----------------------------------------------------------------
    def _aim(self, cam) -> None:
        scene = self.scene
        scene.camera = cam
        apply_camera_resolution(scene, cam)
        scene.render.resolution_percentage = self.percentage

    def _render(self, cam) -> np.ndarray:
        scene = self.scene
        path = self.work / "renders" / f"{cam.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True, scene=scene.name)
        return load_png(path)

    def _finish_camera(self, cam, splat: np.ndarray | None) -> None:
        scene_rgba, self._scene_rgba, self._requested = self._scene_rgba, None, False
        photo_image = photo_of(cam)
        if photo_image is None:
            raise ValueError(f"camera {cam.name} has no photo (background image) to compare with")
        size = scene_rgba.shape[:2] if scene_rgba is not None else splat.shape[:2]
        photo = preview_math.shrink(image_pixels(photo_image)[..., :3], size[1], size[0])
        result = CameraResult(cam.name, bpy.path.abspath(photo_image.filepath),
                              preview=f"{PREVIEWS_DIR}/{cam.name}.png")
        renders = [rgba for rgba in (scene_rgba, splat) if rgba is not None]
        for source, rgba in (("mesh", scene_rgba), ("splats", splat)):
            if rgba is not None:
                result.scores[source] = preview_math.scores(photo, rgba)
        save_png(preview_math.side_by_side(photo, renders), self.work / f"{cam.name}.png", name=_WORK_IMAGE)
        self.results.append(result)
        self.index += 1

    def _finish(self) -> None:
        ordered = sorted(self.results, key=CameraResult.sort_key)
        sheet_rows = [load_png(self.work / f"{r.camera}.png")[..., :3] for r in ordered]
        sheet = save_png(preview_math.contact_sheet(sheet_rows), self.work / CONTACT_SHEET,
                         name="Reconstruct contact sheet")
        metrics = write_metrics(self.work / METRICS_FILE, ordered, self.engine if self.render_scene else None,
                                str(self.workspace))
        shutil.rmtree(self.out, ignore_errors=True)
        os.replace(self.work, self.out)
        sheet.filepath_raw = str(self.out / CONTACT_SHEET)
        for result in self.results:  # the cameras' scores change only with metrics.json
            cam = bpy.data.objects[result.camera]
            for (source, metric), key in KEYS.items():
                value = result.scores.get(source, {}).get(metric)
                if value is None:
                    cam.pop(key, None)
                else:
                    cam[key] = value
        self.stop("DONE", _summary_line(metrics))
        show_in_image_editor(sheet)

    # Scene settings -------------------------------------------------------------
    def _save_settings(self) -> dict:
        scene, r = self.scene, self.scene.render
        saved = {"camera": scene.camera, "engine": r.engine, "x": r.resolution_x, "y": r.resolution_y,
                 "pct": r.resolution_percentage, "ax": r.pixel_aspect_x, "ay": r.pixel_aspect_y,
                 "transparent": r.film_transparent, "filepath": r.filepath,
                 "format": r.image_settings.file_format, "mode": r.image_settings.color_mode,
                 "depth": r.image_settings.color_depth, "view": scene.view_settings.view_transform,
                 "look": scene.view_settings.look, "light": scene.display.shading.light,
                 "aa": scene.display.render_aa,
                 "color_type": scene.display.shading.color_type, "samples": scene.cycles.samples,
                 "eevee_samples": scene.eevee.taa_render_samples,
                 "hidden": {name: bpy.data.objects[name].hide_render for name in self.hide}}
        return saved

    def _apply_settings(self) -> None:
        scene, r = self.scene, self.scene.render
        set_engine(r, self.engine)
        r.film_transparent = True
        r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth = "PNG", "RGBA", "8"
        scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"
        if self.engine == "WORKBENCH":  # colours as they are, unlit: our meshes' texture or vertex colours
            scene.display.shading.light, scene.display.shading.color_type = "FLAT", _workbench_colors(scene)
            # Workbench draws the scene once per anti-aliasing sample (8 by default): without
            # a GPU that is 7x the time of one pass and FXAA for a 300k-face mesh.
            scene.display.render_aa = "FXAA"
        scene.cycles.samples = scene.eevee.taa_render_samples = self.samples
        for name in self.hide:
            bpy.data.objects[name].hide_render = True

    def _restore(self, s: dict) -> None:
        scene, r = self.scene, self.scene.render
        scene.camera = s["camera"]
        r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage = s["engine"], s["x"], s["y"], s["pct"]
        r.pixel_aspect_x, r.pixel_aspect_y, r.film_transparent, r.filepath = s["ax"], s["ay"], s["transparent"], \
            s["filepath"]
        r.image_settings.file_format, r.image_settings.color_mode = s["format"], s["mode"]
        r.image_settings.color_depth = s["depth"]
        scene.view_settings.view_transform, scene.view_settings.look = s["view"], s["look"]
        scene.display.shading.light, scene.display.shading.color_type = s["light"], s["color_type"]
        scene.display.render_aa = s["aa"]
        scene.cycles.samples, scene.eevee.taa_render_samples = s["samples"], s["eevee_samples"]
        for name, hidden in s["hidden"].items():
            if name in bpy.data.objects:
                bpy.data.objects[name].hide_render = hidden


def _workbench_colors(scene) -> str:
    """Texture when a textured job mesh shows its atlas (the sidebar's Mesh Colours), else
    the vertex colours."""
    from ..importers.mesh import is_textured

    settings = getattr(scene, "reconstruct", None)
    if settings is not None and settings.mesh_colors == "TEXTURE" and any(
            o.type == "MESH" and not o.hide_render and is_textured(o) for o in scene.objects):
        return "TEXTURE"
    return "VERTEX"


def _aids(scene) -> list[bpy.types.Object]:
    """The point clouds and splat displays the add-on imported (their modifiers
    run our tagged node groups): viewport aids, left out of the scene render."""
    from ..importers import points, splats

    tags = (points.TAG, splats.TAG)
    return [o for o in scene.objects
            if any(m.type == "NODES" and m.node_group and any(t in m.node_group for t in tags) for m in o.modifiers)]


def write_metrics(path: Path, ordered: list[CameraResult], engine: str | None, workspace: str) -> dict:
    def mean(source, metric):
        values = [r.scores[source][metric] for r in ordered if r.scores.get(source, {}).get(metric) is not None]
        return float(np.mean(values)) if values else None

    sources = sorted({s for r in ordered for s in r.scores})
    metrics = {
        "workspace": workspace, "engine": engine,
        "coverage": f"pixels where the render's alpha >= {preview_math.COVERED_ALPHA} (transparent film for the "
                    "scene; accumulated opacity for splats); PSNR and SSIM are over those pixels",
        "order": "worst first: lowest PSNR over the sources",
        "contact_sheet": f"{PREVIEWS_DIR}/{CONTACT_SHEET}",
        "cameras": [{"camera": r.camera, "photo": r.photo, "preview": r.preview, **r.scores} for r in ordered],
        "mean": {s: {m: mean(s, m) for m in ("psnr", "ssim", "coverage")} for s in sources},
        "worst": ordered[0].camera if ordered else None,
    }
    path.write_text(json.dumps(metrics, indent=2))
    return metrics


def _summary_line(metrics: dict) -> str:
    parts = [f"{s} mean PSNR {m['psnr']:.1f} dB" for s, m in metrics["mean"].items() if m["psnr"] is not None]
    return f"{len(metrics['cameras'])} previews: " + ", ".join(parts) + f"; worst: {metrics['worst']}"


def show_in_image_editor(image: bpy.types.Image) -> None:
    """Show `image` in the first Image Editor of the open windows (none when headless)."""
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                return


def run_to_end(session: PreviewSession) -> PreviewSession:
    """Drive a session to its end in one go (command line, no UI to keep alive)."""
    while not session.done:
        session.tick()
    return session
