"""Registered COLMAP images become Blender cameras that see what the photos saw.

One camera object per image, named after the photo, with the photo as its background
image. Intrinsics and pose come from camera_math (the one place that converts between
COLMAP and Blender). Resolution and pixel aspect are scene settings in Blender, so each
camera keeps its photo's on itself and they are applied when it becomes the scene camera.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..shared import camera_math
from ..shared.colmap_io import Model, read_model
from ..shared.layout import Layout

RESOLUTION_KEY = "reconstruct_resolution"  # (W, H) of the photo, px
PIXEL_ASPECT_KEY = "reconstruct_pixel_aspect"  # (x, y), Blender's pixel aspect for fx != fy
IMAGE_NAME_KEY = "reconstruct_image"  # the image's name in the COLMAP model
IMAGE_ID_KEY = "reconstruct_image_id"


@dataclass
class CameraSpec:
    """One camera, worked out from the model (numpy and paths only, so any thread may make it)."""

    stem: str
    image_name: str
    image_id: int
    intrinsics: camera_math.BlenderIntrinsics
    matrix_world: list  # 4x4 rows
    photo: Path | None  # the background photo, where it exists


@dataclass
class CamerasData:
    cameras: list[CameraSpec]
    scale: float | None  # typical distance of the cameras from their middle

    def __len__(self) -> int:
        return len(self.cameras)


def prepare_cameras(model: Model, image_dir: Path | None = None) -> CamerasData:
    """The numpy half of :func:`import_cameras`: intrinsics, poses, which photos exist; no bpy."""
    images = sorted(model.images.values(), key=lambda im: im.name)
    centers = np.array([im.center for im in images]).reshape(-1, 3)
    specs = []
    for image in images:
        cam = model.cameras.get(image.camera_id)
        if cam is None:
            raise ValueError(f"image {image.name!r} refers to camera {image.camera_id}, which the model does not have")
        photo = Path(image_dir) / image.name if image_dir is not None else None
        specs.append(CameraSpec(Path(image.name).stem, image.name, image.id,
                                camera_math.intrinsics_to_blender(cam.width, cam.height, *cam.pinhole()),
                                camera_math.colmap_to_blender_matrix(image.R, image.t).tolist(),
                                photo if photo is not None and photo.is_file() else None))
    return CamerasData(specs, _scene_scale(centers))


def import_cameras(
    model: Model, collection: bpy.types.Collection, image_dir: Path | None = None
) -> list[bpy.types.Object]:
    """One camera object per registered image of ``model``, linked into ``collection``, sorted by name.

    Distortion is left out (Blender's camera is a pinhole), so give this the undistorted
    model and photos where there are some. Photos found under ``image_dir`` become the
    cameras' background images.
    """
    return build_cameras(prepare_cameras(model, image_dir), collection)


def build_cameras(data: CamerasData, collection: bpy.types.Collection) -> list[bpy.types.Object]:
    """The bpy half of :func:`import_cameras` (main thread): one camera object per spec."""
    scale = data.scale
    objects = []
    for spec in data.cameras:
        intr = spec.intrinsics
        cam_data = bpy.data.cameras.new(spec.stem)
        cam_data.type = "PERSP"
        cam_data.lens_unit = "MILLIMETERS"
        cam_data.lens = intr.lens
        cam_data.sensor_width = intr.sensor_width
        cam_data.sensor_height = intr.sensor_height
        cam_data.sensor_fit = intr.sensor_fit
        cam_data.shift_x, cam_data.shift_y = intr.shift_x, intr.shift_y
        if scale is not None:
            cam_data.display_size = 0.1 * scale
            cam_data.clip_start = min(cam_data.clip_start, 0.01 * scale)
            cam_data.clip_end = max(cam_data.clip_end, 100.0 * scale)

        obj = bpy.data.objects.new(spec.stem, cam_data)
        obj.matrix_world = Matrix(spec.matrix_world)
        obj[RESOLUTION_KEY] = (intr.resolution_x, intr.resolution_y)
        obj[PIXEL_ASPECT_KEY] = (intr.pixel_aspect_x, intr.pixel_aspect_y)
        obj[IMAGE_NAME_KEY] = spec.image_name
        obj[IMAGE_ID_KEY] = spec.image_id
        if spec.photo is not None:
            _set_background_photo(cam_data, spec.photo)
        collection.objects.link(obj)
        objects.append(obj)
    return objects


def workspace_model(workspace: Path) -> tuple[Path, Path | None]:
    """(model folder, photo folder) to import from a Reconstruct workspace: the
    undistorted model and photos when the workspace has them (Blender can show
    them exactly), else the SfM model with the original photos recorded in
    ``summary.json``."""
    layout = Layout(workspace)
    if layout.undistorted_model.is_dir():
        return layout.undistorted_model, layout.undistorted_images
    return layout.model, workspace_photos(workspace)


def import_workspace_cameras(workspace: Path, collection: bpy.types.Collection) -> list[bpy.types.Object]:
    """Cameras from a Reconstruct workspace (see workspace_model)."""
    model_dir, image_dir = workspace_model(workspace)
    return import_cameras(read_model(model_dir), collection, image_dir)


def workspace_photos(workspace: Path) -> Path | None:
    """The photos a workspace's SfM cameras saw: its upright copies when some photos are
    stored on their side (EXIF Orientation), else the photo folder its ``summary.json`` records."""
    layout = Layout(workspace)
    if layout.upright_photos.is_dir():  # there only while some photo needs turning
        return layout.upright_photos
    try:
        photos = json.loads(layout.summary_file.read_text()).get("photos")
    except (OSError, ValueError):
        return None
    return Path(photos) if photos else None


def find_image_dir(model_dir: Path) -> Path | None:
    """Where a model's photos usually are: COLMAP's layouts (``images/`` beside ``sparse/``,
    or beside ``sparse/0``) or, for a Reconstruct workspace's ``sparse/model``, its photos."""
    model_dir = Path(model_dir).resolve()
    for candidate in (model_dir.parent / "images", model_dir.parent.parent / "images"):
        if candidate.is_dir():
            return candidate
    return workspace_photos(model_dir.parent.parent)


def apply_camera_resolution(scene: bpy.types.Scene, camera_obj: bpy.types.Object, percentage: bool = True) -> bool:
    """Set the scene's resolution and pixel aspect to ``camera_obj``'s photo's.

    Returns False (and changes nothing) for a camera that was not imported from a photo.
    ``percentage`` also resets the resolution percentage to 100, so renders match the photo pixel for pixel.
    """
    if camera_obj is None or RESOLUTION_KEY not in camera_obj:
        return False
    width, height = (int(v) for v in camera_obj[RESOLUTION_KEY])
    aspect_x, aspect_y = (float(v) for v in camera_obj.get(PIXEL_ASPECT_KEY, (1.0, 1.0)))
    render = scene.render
    # Only write what differs: every write triggers a depsgraph update (and this runs from one).
    if (render.resolution_x, render.resolution_y) != (width, height):
        render.resolution_x, render.resolution_y = width, height
    if not (np.isclose(render.pixel_aspect_x, aspect_x) and np.isclose(render.pixel_aspect_y, aspect_y)):
        render.pixel_aspect_x, render.pixel_aspect_y = aspect_x, aspect_y
    if percentage and render.resolution_percentage != 100:
        render.resolution_percentage = 100
    return True


def make_active_camera(scene: bpy.types.Scene, camera_obj: bpy.types.Object) -> None:
    """Make ``camera_obj`` the scene camera, with its photo's resolution and pixel aspect."""
    scene.camera = camera_obj
    apply_camera_resolution(scene, camera_obj)


@bpy.app.handlers.persistent
def sync_active_camera_resolution(scene: bpy.types.Scene, depsgraph=None) -> None:
    """depsgraph_update_post handler: when the scene camera is one of ours (switched any
    way, e.g. Ctrl+Numpad0 or camera markers), follow its photo's resolution and pixel
    aspect. The resolution percentage is left alone: it scales the frame without changing
    what the camera sees."""
    if scene.camera is not None:
        apply_camera_resolution(scene, scene.camera, percentage=False)


class RECONSTRUCT_OT_set_active_camera(bpy.types.Operator):
    """Make this photo's camera the scene camera and use its photo's resolution and pixel aspect"""

    bl_idname = "reconstruct.set_active_camera"
    bl_label = "Set Active Photo Camera"
    bl_options = {"REGISTER", "UNDO"}

    name: bpy.props.StringProperty(
        name="Camera",
        description="Camera object to make active (empty: the active object)",
        default="",
    )

    def execute(self, context):
        obj = bpy.data.objects.get(self.name) if self.name else context.active_object
        if obj is None or obj.type != "CAMERA":
            what = f"{self.name!r}" if self.name else "The active object"
            self.report({"ERROR"}, f"{what} is not a camera")
            return {"CANCELLED"}
        make_active_camera(context.scene, obj)
        return {"FINISHED"}


classes = (RECONSTRUCT_OT_set_active_camera,)


def _set_background_photo(data: bpy.types.Camera, path: Path) -> bool:
    if not path.is_file():
        return False
    image = bpy.data.images.load(str(path), check_existing=True)
    if image.has_data:  # already loaded (a rerun replacing this job's cameras): the file may be new
        image.reload()
    background = data.background_images.new()
    background.image = image
    background.source = "IMAGE"
    # Fill the camera frame exactly: with fx != fy the frame's aspect is not the photo's.
    background.frame_method = "STRETCH"
    background.alpha = 1.0
    data.show_background_images = True
    return True


def _scene_scale(centers: np.ndarray) -> float | None:
    """Typical distance of the cameras from their middle; None when it says nothing."""
    if len(centers) < 2:
        return None
    scale = float(np.median(np.linalg.norm(centers - np.median(centers, axis=0), axis=1)))
    return scale if np.isfinite(scale) and scale > 0 else None
