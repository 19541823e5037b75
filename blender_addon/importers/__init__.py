"""Plain data (colmap_io models, numpy arrays) in, Blender data out: one module per kind of data."""

from .cameras import (
    apply_camera_resolution,
    import_cameras,
    import_workspace_cameras,
    make_active_camera,
    sync_active_camera_resolution,
)
from .points import import_points, set_point_size

__all__ = [
    "apply_camera_resolution",
    "import_cameras",
    "import_points",
    "import_workspace_cameras",
    "make_active_camera",
    "set_point_size",
    "sync_active_camera_resolution",
]
