"""Reconstruct: photos to 3D inside Blender (Blender extension package).

This package must import without bpy: the backend shares `protocol.py`,
`camera_math.py` and `colmap_io.py` with it. Everything that needs bpy is
imported in register().
"""


def _modules():
    from .ui import frame_ops, import_colmap, operators, panels, preview_ops, preferences, properties
    from .link import jobs
    from .importers import cameras

    return properties, preferences, cameras, operators, frame_ops, import_colmap, panels, preview_ops, jobs


def register() -> None:
    import bpy

    from .ui import import_colmap, properties
    from .importers import cameras, frame
    from .viewport import splat_draw
    from .render import compositing

    properties.add_stage_toggles()
    for module in _modules():
        for cls in getattr(module, "classes", ()):
            bpy.utils.register_class(cls)
    properties.register()
    bpy.types.TOPBAR_MT_file_import.append(import_colmap.menu_func_import)
    bpy.app.handlers.depsgraph_update_post.append(cameras.sync_active_camera_resolution)
    frame.register_handlers()  # undo/redo keeps adjustment.json matching the job's parent empty
    splat_draw.register()  # the viewport draws splat objects as Gaussians (not in background mode)
    compositing.register()  # F12 draws them before each frame, for the compositor to lay in


def unregister() -> None:
    import bpy

    from .ui import import_colmap, preview_ops, properties
    from .link import jobs
    from .importers import cameras, frame
    from .viewport import splat_draw
    from .render import compositing

    compositing.unregister()
    splat_draw.unregister()
    frame.unregister_handlers()
    preview_ops.unregister()
    jobs.unregister()
    if cameras.sync_active_camera_resolution in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(cameras.sync_active_camera_resolution)
    bpy.types.TOPBAR_MT_file_import.remove(import_colmap.menu_func_import)
    properties.unregister()
    for module in reversed(_modules()):
        for cls in reversed(getattr(module, "classes", ())):
            bpy.utils.unregister_class(cls)
