"""File > Import > COLMAP model: a model folder becomes a collection of photo cameras and a point cloud."""

from pathlib import Path

import bpy
from bpy_extras.io_utils import ImportHelper

from ..shared.colmap_io import Model, read_model

# Folder names that say nothing about which model it is; the collection name keeps going up past them.
_GENERIC_FOLDERS = {"sparse", "model", "models", "undistorted", "colmap"}


class RECONSTRUCT_OT_import_colmap(bpy.types.Operator, ImportHelper):
    """Import a COLMAP sparse model (.bin or .txt): a camera per photo and a colored point cloud"""

    bl_idname = "reconstruct.import_colmap"
    bl_label = "Import COLMAP Model"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ""
    filter_glob: bpy.props.StringProperty(default="*.bin;*.txt", options={"HIDDEN"})
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})

    import_cameras: bpy.props.BoolProperty(
        name="Cameras", description="One camera per registered photo", default=True
    )
    import_points: bpy.props.BoolProperty(name="Points", description="The sparse point cloud", default=True)
    point_size: bpy.props.FloatProperty(
        name="Point Size", description="Radius of each point", default=0.01, min=0.0, soft_max=1.0,
        subtype="DISTANCE", precision=4,
    )  # fmt: skip
    image_dir: bpy.props.StringProperty(
        name="Photos",
        description="Folder with the photos, shown behind the cameras (empty: look beside the model)",
        subtype="DIR_PATH",
        default="",
    )

    def execute(self, context):
        from ..importers import cameras as camera_importer, points as point_importer
        from ..importers.datablocks import undo_on_failure

        try:
            folder = self._model_folder()
            model = read_model(folder)
            if self.import_cameras and self.image_dir:
                image_dir = Path(bpy.path.abspath(self.image_dir))
                if not image_dir.is_dir():
                    raise ValueError(f"photo folder {image_dir} does not exist")
            else:
                image_dir = camera_importer.find_image_dir(folder)
        except (ValueError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}

        try:
            with undo_on_failure():  # a failed import leaves the scene and the file as they were
                collection = bpy.data.collections.new(_collection_name(folder))
                context.scene.collection.children.link(collection)
                cams = []
                if self.import_cameras:
                    cams = camera_importer.import_cameras(model, collection, image_dir)
                if self.import_points:
                    point_importer.import_points(
                        f"{collection.name} points", model.xyz, model.rgb, collection, self.point_size
                    )
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if cams and (context.scene.camera is None or context.scene.camera.name not in context.scene.objects):
            camera_importer.make_active_camera(context.scene, cams[0])
        for warning in _warnings(model, cams, image_dir):
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Imported {len(cams)} cameras and {len(model.xyz)} points into {collection.name!r}")
        return {"FINISHED"}

    def _model_folder(self) -> Path:
        path = Path(bpy.path.abspath(self.directory or self.filepath))
        if not path.is_dir():
            path = path.parent
        return path

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "import_cameras")
        row = layout.row()
        row.enabled = self.import_cameras
        row.prop(self, "image_dir")
        layout.prop(self, "import_points")
        row = layout.row()
        row.enabled = self.import_points
        row.prop(self, "point_size")


def _warnings(model: Model, cams: list, image_dir: Path | None) -> list[str]:
    warnings = []
    distorted = sorted({c.model for c in model.cameras.values() if not c.is_pinhole})
    if cams and distorted:
        warnings.append(
            f"Lens distortion ({', '.join(distorted)}) cannot be shown by Blender cameras and was left out; "
            "import the undistorted model (undistorted/sparse) for an exact match with the photos"
        )
    missing = sum(1 for obj in cams if not obj.data.background_images)
    if missing:
        where = f"in {image_dir}" if image_dir else "(no photo folder found; choose one under Photos)"
        warnings.append(f"{missing} of {len(cams)} photos not found {where}")
    return warnings


def _collection_name(folder: Path) -> str:
    parts = []
    for part in reversed(folder.resolve().parts):
        parts.insert(0, part)
        if part.lower() not in _GENERIC_FOLDERS and not part.isdigit():
            break
    return "/".join(parts)[-60:]


class RECONSTRUCT_OT_import_splats(bpy.types.Operator, ImportHelper):
    """Import Gaussian splats from a PLY in the standard 3D Gaussian Splatting layout (any tool's)"""

    bl_idname = "reconstruct.import_splats"
    bl_label = "Import Gaussian Splats"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default="*.ply", options={"HIDDEN"})
    density: bpy.props.FloatProperty(name="Density", default=1.0, min=0.0, max=1.0, subtype="FACTOR",
                                     description="Fraction of the splats shown (lower it for large captures)")

    def execute(self, context):
        from ..importers.splats import import_splats
        from ..shared.ply_io import PlyError
        from ..shared.splat_ply import read_splats

        path = Path(self.filepath)
        try:
            splats = read_splats(path)
        except (OSError, PlyError) as exc:
            self.report({"ERROR"}, f"Cannot import {path.name}: {exc}")
            return {"CANCELLED"}
        obj = import_splats(path.stem, splats, context.collection, density=self.density)
        self.report({"INFO"}, f"Imported {len(splats)} splats (spherical harmonics degree {splats.degree}) "
                              f"as {obj.name!r}")
        return {"FINISHED"}


def menu_func_import(self, context):
    self.layout.operator(RECONSTRUCT_OT_import_colmap.bl_idname, text="COLMAP model (.bin/.txt)")
    self.layout.operator(RECONSTRUCT_OT_import_splats.bl_idname, text="Gaussian splats (.ply)")


classes = (RECONSTRUCT_OT_import_colmap, RECONSTRUCT_OT_import_splats)
