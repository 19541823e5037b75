"""A workspace's results become Blender data: one collection per job with
the cameras, the sparse and dense point clouds, the mesh and the splats.

Two halves, so that the reading never holds Blender's main thread:
- `read_source` (any thread, no bpy): reads a file (read_model, read_ply,
  read_splats) and converts it into the flat arrays Blender's `foreach_set`
  takes as they are (float32 positions, scene-linear RGBA, int32 corners).
- `build_part` (main thread): creates the datablocks from those arrays and
  replaces the part's previous objects in the job's collection, so a rerun
  never duplicates a job's objects.

`JobImport` runs the two for a running job: the timer hands it each stage's
artifacts as the backend finishes the stage, a reader thread prepares them,
and the timer builds one part per call. `import_workspace` does both at once
for a finished workspace (the demo's .blend export, the previews' command
line, tests), so all take the same path."""
from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from ..shared.colmap_io import read_model
from ..shared.layout import ATLAS_PNG, REGION_JSON, Layout
from .datablocks import undo_on_failure
from .cameras import IMAGE_NAME_KEY, build_cameras, make_active_camera, prepare_cameras, workspace_model
from .frame import job_origin, parent_to_origin
from .mesh import build_mesh, prepare_mesh, prepare_textured_mesh, show_vertex_colors_in_solid_view
from .points import MODIFIER as POINTS_MODIFIER, build_points, prepare_points
from .region import AUTO_KEY as REGION_KEY, build_region, prepare_region
from .splats import MODIFIER as SPLATS_MODIFIER, build_splats, prepare_splats
from ..render.compositing import ensure_compositing
from ..shared.glb_io import read_glb
from ..shared.ply_io import read_ply
from ..shared.splat_ply import read_splats

PARTS = ("cameras", "sparse", "region", "dense", "mesh", "splats")
LABELS = {"cameras": "cameras", "sparse": "sparse points", "region": "region", "dense": "dense points",
          "mesh": "mesh", "splats": "splats"}
WORKSPACE_KEY = "reconstruct_workspace"  # on the job's collection: the workspace it shows
PART_KEY = "reconstruct_part"  # on each object of a job: which part it is (one of PARTS)
# What each file holds (a COLMAP model holds both the cameras and the sparse points).
# The texture stage's textured.obj is the job's mesh too, with UVs and the atlas: it replaces
# the vertex-coloured one (whose colours it keeps) once it is there.
# The undistorted model's folder also holds the automatic region (region.json).
SOURCE_PARTS = {"model": ("cameras", "sparse", "region"), "dense": ("dense",), "mesh": ("mesh",), "textured": ("mesh",),
                "splats": ("splats",)}
# Splats shown at full density up to this many; beyond, the display keeps a
# random fraction (the Density input of the object's modifier; renders and
# exports can turn it back up).
DISPLAY_SPLATS = 300_000


def dense_points_file(workspace: Path) -> Path:
    return Layout(workspace).fused


def mesh_file(workspace: Path) -> Path:
    return Layout(workspace).mesh_ply


def textured_file(workspace: Path) -> Path | None:
    """The workspace's textured.obj if it is there and was made from the mesh
    that is there now (a mesh rerun without texturing leaves an older one)."""
    layout = Layout(workspace)
    try:
        made_from = json.loads(layout.texture_info.read_text())["mesh_file"]
        stat = layout.mesh_ply.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (layout.textured_obj.is_file() and layout.textured_glb.is_file()) or made_from != {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return None
    return layout.textured_obj


def splats_file(workspace: Path) -> Path:
    return Layout(workspace).splats_ply


@dataclass
class Prepared:
    """One part read and converted, ready for `build_part`."""

    part: str
    data: Any  # CamerasData, PointsData, MeshData or SplatsData
    count: int  # cameras, points, faces or splats
    path: Path  # the file (or model folder) it came from
    read_seconds: float = 0.0
    build_seconds: float = 0.0
    built: bool = False  # datablocks were created for it


@dataclass
class Failed:
    part: str
    message: str
    path: Path
    count: int = 0
    read_seconds: float = 0.0
    built: bool = False  # its build was tried (and may have created datablocks before failing)


# Reading (any thread) ---------------------------------------------------------------------------------
def read_source(kind: str, path: Path, parts: tuple[str, ...], image_dir: Path | None = None) -> list[Prepared]:
    """Read `path` (a COLMAP model folder for kind "model", else a PLY) and prepare the
    requested `parts` of it. No bpy: safe on any thread. Raises on a bad file."""
    started = time.perf_counter()
    path = Path(path)
    out = []
    if kind == "model":
        model = read_model(path)
        if "cameras" in parts:
            cameras = prepare_cameras(model, image_dir)
            out.append(Prepared("cameras", cameras, len(cameras), path))
        if "sparse" in parts:
            out.append(Prepared("sparse", prepare_points(model.xyz, model.rgb), len(model.xyz), path))
        region_file = path.parent / REGION_JSON
        if "region" in parts and region_file.is_file():
            out.append(Prepared("region", prepare_region(json.loads(region_file.read_text())), 1, region_file))
    elif kind == "dense":
        ply = read_ply(path)
        out.append(Prepared("dense", prepare_points(ply.column("x", "y", "z"), _rgb(ply)), len(ply.vertices), path))
    elif kind == "mesh":
        ply = read_ply(path)
        mesh = prepare_mesh(path.name, ply.column("x", "y", "z"), ply.faces, _rgb(ply))
        out.append(Prepared("mesh", mesh, mesh.num_faces, path))
    elif kind == "textured":  # path: the texture stage's textured.obj; read from its binary siblings
        layout = Layout(path.parent.parent)
        ply = read_ply(layout.mesh_ply)
        mesh = prepare_textured_mesh(path.name, ply.column("x", "y", "z"), ply.faces, _rgb(ply),
                                     read_glb(layout.textured_glb), str(layout.texture_dir / ATLAS_PNG))
        out.append(Prepared("mesh", mesh, mesh.num_faces, path))
    elif kind == "splats":
        splats = prepare_splats(read_splats(path))
        out.append(Prepared("splats", splats, len(splats), path))
    else:
        raise ValueError(f"unknown kind of result {kind!r}")
    seconds = time.perf_counter() - started
    for item in out:
        item.read_seconds = seconds
    return out


def workspace_sources(workspace: Path, parts: tuple[str, ...]) -> list[tuple[str, Path, Path | None]]:
    """(kind, path, image folder) for each file of `workspace` that holds one of `parts`
    and exists."""
    workspace = Path(workspace)
    out = []
    model_dir, image_dir = workspace_model(workspace)
    if model_dir.is_dir() and any(p in parts for p in SOURCE_PARTS["model"]):
        out.append(("model", model_dir, image_dir))
    textured = textured_file(workspace)
    for kind, path in (("dense", dense_points_file(workspace)),
                       ("textured", textured) if textured else ("mesh", mesh_file(workspace)),
                       ("splats", splats_file(workspace))):
        if any(p in parts for p in SOURCE_PARTS[kind]) and path.is_file():
            out.append((kind, path, None))
    return out


def stage_source(stage: str, artifacts: dict) -> tuple[str, Path, Path | None] | None:
    """What a backend `stage_done` event brings to import: (kind, path, image folder)."""
    if stage == "undistort" and artifacts.get("cameras"):
        model = Path(artifacts["cameras"])  # undistorted/sparse; its photos are in undistorted/images
        return "model", model, model.parent / "images"
    for want_stage, kind, key in (("fusion", "dense", "dense_points"), ("mesh", "mesh", "mesh"),
                                  ("texture", "textured", "textured_obj"), ("splats", "splats", "splats_ply")):
        if stage == want_stage and artifacts.get(key):
            return kind, Path(artifacts[key]), None
    return None


# Building (main thread) ---------------------------------------------------------------------------------
def job_collection(scene, workspace: Path, name: str, create: bool = True):
    """The job's collection in `scene`: the one tagged with `workspace` (linked into the
    scene if it is not), else a new one named `name` (made unique by Blender)."""
    key = _path_key(workspace)
    tagged = [c for c in bpy.data.collections if c.library is None and WORKSPACE_KEY in c
              and _path_key(c[WORKSPACE_KEY]) == key]
    in_scene = {c.name for c in scene.collection.children_recursive}
    for collection in sorted(tagged, key=lambda c: c.name not in in_scene):
        if collection.name not in in_scene:
            scene.collection.children.link(collection)
        return collection
    if not create:
        return None
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)
    collection[WORKSPACE_KEY] = key
    return collection


def part_of(obj) -> str | None:
    """Which part of a job `obj` is (objects imported before parts were tagged: by kind and name)."""
    part = obj.get(PART_KEY)
    if part:
        return str(part)
    if obj.type == "CAMERA" and IMAGE_NAME_KEY in obj:
        return "cameras"
    if REGION_KEY in obj:
        return "region"
    if obj.type == "MESH":
        stem = re.sub(r"\.\d{3,}$", "", obj.name)
        if obj.modifiers.get(SPLATS_MODIFIER) is not None:
            return "splats"
        if obj.modifiers.get(POINTS_MODIFIER) is not None:
            return "dense" if stem.endswith(" dense points") else "sparse" if stem.endswith(" sparse points") else None
        if stem.endswith(" mesh"):
            return "mesh"
    return None


def build_part(item: Prepared, collection, name: str, scene, point_size: float = 0.01) -> list:
    """Create `item`'s objects in `collection`, then remove the objects of the same part
    that were there (and their data): a rerun replaces, never duplicates. The new
    objects take the old ones' names. A failure leaves the old objects in place."""
    started = time.perf_counter()
    old = [o for o in collection.all_objects if part_of(o) == item.part]
    data = item.data
    if item.part == "region" and old:  # the user's box (moved or not) stays: delete it to get a new one
        item.build_seconds = time.perf_counter() - started
        return old
    with undo_on_failure():  # a failure leaves no datablock of this part behind
        if item.part == "cameras":
            names = [spec.stem for spec in data.cameras]
            new = build_cameras(data, collection)
        elif item.part in ("sparse", "dense"):
            names = [f"{name} {LABELS[item.part]}"]
            # Dense points sit far closer together than sparse ones.
            new = [build_points(names[0], data, collection, point_size if item.part == "sparse" else point_size / 4)]
        elif item.part == "mesh":
            names = [f"{name} mesh"]
            new = [build_mesh(names[0], data, collection)]
            show_vertex_colors_in_solid_view(getattr(bpy.context, "screen", None))
        elif item.part == "region":
            names = [f"{name} region"]
            new = [build_region(names[0], data, collection)]
            settings = getattr(scene, "reconstruct", None)
            if settings is not None and settings.roi_object is None:
                settings.roi_object = new[0]
        elif item.part == "splats":
            names = [f"{name} splats"]
            new = [build_splats(names[0], data, collection, density=min(1.0, DISPLAY_SPLATS / max(1, len(data))))]
            ensure_compositing(scene)  # F12 lays the splats over the render
        else:
            raise ValueError(f"unknown part {item.part!r}")
        for obj in new:
            obj[PART_KEY] = item.part
        # Everything of the job hangs under one empty (placed as adjustment.json says) so
        # Set Scale / Set Ground move it all at once; local coordinates stay the workspace's.
        # Parts imported before the job had an origin (older files) are gathered under it too.
        origin = job_origin(collection, create=True)
        parent_to_origin([*new, *(o for o in collection.objects if o.parent is None and part_of(o))], origin)
        if item.part == "cameras":
            _keep_active_camera(scene, old, new)
    remove_objects(old)
    for obj, want in zip(new, names):
        if obj.name != want:
            obj.name = want
        if obj.data is not None and obj.data.name != want and obj.data.users == 1:
            obj.data.name = want
    item.build_seconds = time.perf_counter() - started
    return new


def remove_objects(objects) -> None:
    """Remove `objects` and the data only they used (meshes, cameras)."""
    if not objects:
        return
    ids = list(objects)
    ids += [o.data for o in objects if o.data is not None and o.data.users == 1]
    bpy.data.batch_remove(ids)


def _keep_active_camera(scene, old: list, new: list) -> None:
    if not new:
        return
    if scene.camera is not None and any(scene.camera == o for o in old):
        image = scene.camera.get(IMAGE_NAME_KEY)
        make_active_camera(scene, next((o for o in new if o.get(IMAGE_NAME_KEY) == image), new[0]))
    elif scene.camera is None:
        make_active_camera(scene, new[0])


def import_workspace(workspace: Path, name: str, scene, point_size: float = 0.01,
                     parts: tuple[str, ...] = PARTS):
    """Import `parts` of `workspace` into the job's collection in `scene` (the one tagged
    with this workspace, else a new one named `name`, made unique by Blender); returns
    the collection. Each part replaces that part's previous objects there. Parts whose
    files the workspace lacks are skipped."""
    model_dir, _ = workspace_model(workspace)
    if not model_dir.is_dir():
        raise ValueError(f"{workspace} has no sparse model (sparse/model) yet")
    # Read everything before creating anything: a bad file leaves the scene as it was.
    items = [item for kind, path, image_dir in workspace_sources(workspace, parts)
             for item in read_source(kind, path, tuple(p for p in SOURCE_PARTS[kind] if p in parts), image_dir)]
    with undo_on_failure():  # a failed import leaves the scene and the file as they were
        collection = job_collection(scene, workspace, name)
        for item in items:
            build_part(item, collection, name, scene, point_size)
    return collection


def import_hint(workspace: Path, failed: list[Failed]) -> str:
    """Where the user can import what failed by hand (File > Import reads the same files)."""
    hints = []
    for item in failed:
        if item.part in ("cameras", "sparse"):
            model_dir, _ = workspace_model(workspace)
            hints.append(f"File > Import > COLMAP Model can read {model_dir}")
        elif item.part == "splats":
            hints.append(f"File > Import > Gaussian Splats (.ply) can read {item.path}")
        elif item.path.suffix == ".obj":
            hints.append(f"File > Import > Wavefront (.obj) can read {item.path}")
        else:
            hints.append(f"File > Import > Stanford PLY can read {item.path}")
    return "The workspace is intact: " + "; ".join(dict.fromkeys(hints)) + "." if hints else ""


class JobImport:
    """One job's results, imported as its stages finish.

    `submit` (main thread) hands a file to a reader thread, which reads and prepares
    it (`read_source`); `build_next` (main thread, one part per timer call) creates
    the datablocks (`build_part`). Only `parts` are imported. What was built stays
    when the job is cancelled or a later stage fails."""

    def __init__(self, scene_name: str, workspace: Path, name: str, parts: tuple[str, ...],
                 point_size: float = 0.01):
        self.scene_name, self.workspace, self.name = scene_name, Path(workspace), name
        self.parts, self.point_size = tuple(parts), point_size
        self.imported: list[str] = []  # parts built, in order
        self.counts: dict[str, int] = {}
        self.failed: list[Failed] = []
        self.built: list[Prepared] = []  # with their read and build times
        self.collection_name = ""
        self._submitted: set[str] = set()
        self._pending = 0  # parts submitted and not yet built (or failed)
        self._tasks: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def idle(self) -> bool:
        """Nothing being read and nothing waiting to be built."""
        return self._pending == 0

    def ready(self) -> bool:
        return not self._ready.empty()

    def stage_done(self, stage: str, artifacts: dict) -> None:
        source = stage_source(stage, artifacts or {})
        if source is not None:
            self.submit(*source)

    def submit_missing(self) -> None:
        """Whatever the workspace holds that no stage_done brought (a backend that sends none)."""
        for kind, path, image_dir in workspace_sources(self.workspace, self.parts):
            if kind not in self._submitted:
                self.submit(kind, path, image_dir)

    def submit(self, kind: str, path: Path, image_dir: Path | None = None) -> None:
        wanted = tuple(p for p in SOURCE_PARTS[kind] if p in self.parts)
        if not wanted or kind in self._submitted:
            return
        self._submitted.add(kind)
        self._pending += len(wanted)
        self._tasks.put((kind, Path(path), image_dir, wanted))
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_loop, daemon=True, name="reconstruct-import")
            self._thread.start()

    def _read_loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            kind, path, image_dir, wanted = task
            try:
                items = read_source(kind, path, wanted, image_dir)
            except Exception as exc:  # a bad file: reported, the other parts still come
                items = [Failed(part, f"{exc}", path) for part in wanted]
            for item in items:
                self._ready.put(item)

    def build_next(self) -> Prepared | Failed | None:
        """Create the next prepared part's datablocks (main thread); None if none is ready."""
        try:
            item = self._ready.get_nowait()
        except queue.Empty:
            return None
        self._pending -= 1
        if isinstance(item, Failed):
            self.failed.append(item)
            return item
        scene = bpy.data.scenes.get(self.scene_name)
        try:
            if scene is None:
                raise ValueError(f"the scene {self.scene_name!r} is gone")
            with undo_on_failure():  # nor a new, empty collection
                collection = job_collection(scene, self.workspace, self.name)
                build_part(item, collection, self.name, scene, self.point_size)
        except Exception as exc:
            failed = Failed(item.part, f"{exc}", item.path, read_seconds=item.read_seconds, built=scene is not None)
            self.failed.append(failed)
            return failed
        item.built = True
        self.collection_name = collection.name
        self.imported.append(item.part)
        self.counts[item.part] = item.count
        self.built.append(item)
        item.data = None  # the arrays are in Blender now
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._tasks.put(None)

    def kept(self) -> str:
        """What was imported, for the sidebar: 'cameras (16), sparse points (5432)'."""
        return ", ".join(f"{LABELS[p]} ({self.counts[p]:,})" for p in self.imported)


def _path_key(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _rgb(ply):
    return ply.column("red", "green", "blue", dtype="uint8") if ply.has("red", "green", "blue") else None
