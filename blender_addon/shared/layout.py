"""Where everything lives inside a workspace folder: the one place its file
names are spelled. Shared by the backend (which writes them) and the add-on
(which reads them); no bpy, no numpy."""
from __future__ import annotations

import os
from pathlib import Path

from . import stages

MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin")
"""A COLMAP binary model: the files a model folder must hold."""
# Inside a stage's output folder (COLMAP's undistorted layout; ours for the mesh and splats).
UNDISTORTED_MODEL, UNDISTORTED_IMAGES = "sparse", "images"
UNDISTORTED_MASKS = "masks"
"""The user's masks in the undistorted images' geometry (`<photo>.png`, black = ignore), when the job has masks."""
REGION_JSON = "region.json"  # in undistorted/: the region dense stereo takes when the user gives none
MESH_PLY, MESH_GLB = "mesh.ply", "mesh.glb"
SPLATS_PLY, SPLATS_INFO = "splats.ply", "splats.json"
# Inside the texture stage's output: the textured mesh for other tools and Blender.
TEXTURED_OBJ, TEXTURED_GLB, ATLAS_PNG, TEXTURE_INFO = "textured.obj", "textured.glb", "atlas.png", "texture.json"
# Inside the mapping stage's output: the world frame (upright, centred, metres)
# the model was put into, and the same model in COLMAP's own frame.
FRAME_FILE, COLMAP_FRAME_MODEL = "frame.json", "colmap_frame"


class Layout:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def output(self, stage: str) -> Path:
        """Where `stage`'s output lives (its declaration says)."""
        return self.root / stages.STAGE[stage].output

    @property
    def job_file(self) -> Path: return self.root / "job.json"
    @property
    def summary_file(self) -> Path: return self.root / "summary.json"
    @property
    def frames(self) -> Path: return self.output("frames")
    @property
    def features_db(self) -> Path: return self.output("features")
    @property
    def database(self) -> Path: return self.output("matching")
    @property
    def model(self) -> Path: return self.output("mapping")
    @property
    def frame_file(self) -> Path: return self.model / FRAME_FILE
    @property
    def colmap_frame_model(self) -> Path: return self.model / COLMAP_FRAME_MODEL
    @property
    def adjustment_file(self) -> Path:
        """Set Scale / Set Ground in Blender: the similarity the add-on puts on
        the job's parent empty, kept here so a reimport, rerun or preview keeps it."""
        return self.root / "adjustment.json"
    @property
    def upright_photos(self) -> Path:
        """Copies of the photos turned as their EXIF Orientation says (the user's files are never changed)."""
        return self.root / "photos"
    @property
    def undistorted(self) -> Path: return self.output("undistort")
    @property
    def undistorted_model(self) -> Path: return self.undistorted / UNDISTORTED_MODEL
    @property
    def undistorted_images(self) -> Path: return self.undistorted / UNDISTORTED_IMAGES

    @property
    def region(self) -> Path: return self.undistorted / REGION_JSON
    @property
    def stereo(self) -> Path: return self.output("mvs")
    @property
    def fused(self) -> Path: return self.output("fusion")
    @property
    def mesh_dir(self) -> Path: return self.output("mesh")
    @property
    def mesh_ply(self) -> Path: return self.mesh_dir / MESH_PLY
    @property
    def mesh_glb(self) -> Path: return self.mesh_dir / MESH_GLB
    @property
    def texture_dir(self) -> Path: return self.output("texture")
    @property
    def textured_obj(self) -> Path: return self.texture_dir / TEXTURED_OBJ
    @property
    def textured_glb(self) -> Path: return self.texture_dir / TEXTURED_GLB
    @property
    def texture_info(self) -> Path: return self.texture_dir / TEXTURE_INFO
    @property
    def splats_dir(self) -> Path: return self.output("splats")
    @property
    def splats_ply(self) -> Path: return self.splats_dir / SPLATS_PLY
    @property
    def splats_info(self) -> Path: return self.splats_dir / SPLATS_INFO
    @property
    def previews_dir(self) -> Path: return self.root / "previews"
    @property
    def log_file(self) -> Path: return self.root / "logs" / "worker.log"
    @property
    def lock_file(self) -> Path: return self.root / ".lock"

    def cameras_model(self) -> tuple[Path, Path | None]:
        """The model to import cameras from, and the photos beside it: the
        undistorted ones when the workspace has them (Blender's camera is a
        pinhole), else the SfM model with no photos."""
        if self.undistorted_model.is_dir():
            return self.undistorted_model, self.undistorted_images
        return self.model, None
