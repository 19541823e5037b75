"""Set Scale and Set Ground: place a job in the scene from vertices the user
selects in Edit Mode on any of its objects (mesh, point clouds, ...).

Both change only the job's parent empty (importers/frame.py), so cameras,
clouds, mesh and splats move as one rigid (plus uniform scale) body and each
camera still sees the mesh exactly as before; then they record the empty's
matrix in adjustment.json. They end in Object Mode (see _apply) so that their
undo step restores the empty (bl_options UNDO), and the undo_post/redo_post
handler (frame.record_after_undo) rewrites the file to match it."""
from __future__ import annotations

import bmesh
import bpy
import numpy as np
from mathutils import Matrix, Quaternion, Vector

from ..importers.frame import origin_of, record


def _job_origin(context):
    return origin_of(context.active_object) if context.active_object is not None else None


def _poll(cls, context) -> bool:
    obj = context.active_object
    if obj is None or origin_of(obj) is None:
        cls.poll_message_set("Make an object of a reconstructed job active (its cameras, clouds, mesh, splats)")
        return False
    if context.mode != "EDIT_MESH":
        cls.poll_message_set("Enter Edit Mode (Tab) on a job's mesh or point cloud and select vertices")
        return False
    return True


def selected_points(context, origin) -> np.ndarray:
    """World positions of the selected vertices of every object in Edit Mode under `origin`."""
    out = []
    objects = getattr(context, "objects_in_mode", None) or [context.active_object]
    for obj in objects:
        if obj.type != "MESH" or origin_of(obj) != origin:
            continue
        bm = bmesh.from_edit_mesh(obj.data)
        co = [tuple(v.co) for v in bm.verts if v.select]
        if co:
            M = np.array(obj.matrix_world, np.float64)
            local = np.array(co, np.float64)
            out.append(local @ M[:3, :3].T + M[:3, 3])
    return np.concatenate(out) if out else np.zeros((0, 3))


def _job_cameras(origin) -> list:
    return [o for o in origin.children_recursive if o.type == "CAMERA"]


def _apply(origin, transform: Matrix) -> None:
    """Left-multiply the parent's matrix (a change in world space) and record it.

    Back to Object Mode first: in Edit Mode the operator's undo step would be an
    edit-mesh step, which stores only mesh data, so undo would not bring the
    parent's matrix back; from Object Mode it is a full (memfile) step that does."""
    if bpy.context.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    origin.matrix_world = transform @ origin.matrix_world
    bpy.context.view_layer.update()
    record(origin)


def ground_transform(points: np.ndarray, camera_positions: np.ndarray) -> Matrix:
    """The rotation about the points' centroid that turns their best-fit plane's
    normal (the side the cameras are on) to +Z, then the lift that puts the plane at Z = 0."""
    centroid = points.mean(0)
    _, s, vt = np.linalg.svd(points - centroid)
    normal = vt[2]
    if len(camera_positions):
        side = float(np.mean((camera_positions - centroid) @ normal))
        if side < 0:
            normal = -normal
    elif normal[2] < 0:
        normal = -normal
    rotation = Vector(normal.tolist()).rotation_difference(Vector((0, 0, 1)))
    if abs(normal[2] + 1.0) < 1e-12:  # exactly upside down: any half-turn about a horizontal axis
        rotation = Quaternion((1, 0, 0), np.pi)
    c = Vector(centroid.tolist())
    return Matrix.Translation((c.x, c.y, 0.0)) @ rotation.to_matrix().to_4x4() @ Matrix.Translation(-c)


class RECONSTRUCT_OT_set_scale(bpy.types.Operator):
    bl_idname = "reconstruct.set_scale"
    bl_label = "Set Scale"
    bl_description = ("Scale the whole job (cameras, clouds, mesh, splats) about the world origin so the two "
                      "selected vertices are the given distance apart")
    bl_options = {"REGISTER", "UNDO"}

    distance: bpy.props.FloatProperty(name="Distance", description="The true distance between the two vertices",
                                      default=1.0, min=1e-6, subtype="DISTANCE", unit="LENGTH")

    @classmethod
    def poll(cls, context):
        return _poll(cls, context)

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        origin = _job_origin(context)
        points = selected_points(context, origin)
        if len(points) != 2:
            self.report({"ERROR"}, f"Select exactly two vertices (now {len(points)} selected)")
            return {"CANCELLED"}
        measured = float(np.linalg.norm(points[1] - points[0]))
        if measured < 1e-9:
            self.report({"ERROR"}, "The two selected vertices are at the same place: pick two apart")
            return {"CANCELLED"}
        factor = self.distance / measured
        _apply(origin, Matrix.Diagonal((factor, factor, factor, 1.0)))
        self.report({"INFO"}, f"Scaled the job by {factor:.4g}")
        return {"FINISHED"}


class RECONSTRUCT_OT_set_ground(bpy.types.Operator):
    bl_idname = "reconstruct.set_ground"
    bl_label = "Set Ground"
    bl_description = ("Make the plane through the selected vertices (three or more, or a face) the ground: "
                      "the whole job turns so it is level and moves so it lies at Z = 0")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _poll(cls, context)

    def execute(self, context):
        origin = _job_origin(context)
        points = selected_points(context, origin)
        if len(points) < 3:
            self.report({"ERROR"}, f"Select three or more vertices, or a face, on the ground (now {len(points)})")
            return {"CANCELLED"}
        spread = np.linalg.svd(points - points.mean(0), compute_uv=False)
        if spread[1] <= 1e-9 * max(1.0, spread[0]):
            self.report({"ERROR"}, "The selected vertices lie on a line: select some that span a plane")
            return {"CANCELLED"}
        cams = np.array([tuple(c.matrix_world.translation) for c in _job_cameras(origin)], np.float64).reshape(-1, 3)
        _apply(origin, ground_transform(points, cams))
        self.report({"INFO"}, "The selection is now the ground (Z = 0)")
        return {"FINISHED"}


class RECONSTRUCT_OT_reset_frame(bpy.types.Operator):
    bl_idname = "reconstruct.reset_frame"
    bl_label = "Reset Placement"
    bl_description = "Put the job back as the backend made it (undo Set Scale / Set Ground)"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if context.active_object is None or origin_of(context.active_object) is None:
            cls.poll_message_set("Make an object of a reconstructed job active")
            return False
        return True

    def execute(self, context):
        origin = _job_origin(context)
        origin.matrix_world = Matrix.Identity(4)
        bpy.context.view_layer.update()
        record(origin)
        return {"FINISHED"}


def draw(layout, context) -> None:
    """The sidebar's placement buttons, for the active object's job."""
    origin = _job_origin(context)
    box = layout.box()
    box.label(text=f"Placement: {origin.name}" if origin is not None else "Placement", icon="EMPTY_ARROWS")
    row = box.row(align=True)
    row.operator(RECONSTRUCT_OT_set_scale.bl_idname, icon="FIXED_SIZE")
    row.operator(RECONSTRUCT_OT_set_ground.bl_idname, icon="AXIS_TOP")
    box.operator(RECONSTRUCT_OT_reset_frame.bl_idname, icon="LOOP_BACK")
    if origin is None:
        box.label(text="Select an object of a job", icon="INFO")
    elif context.mode != "EDIT_MESH":
        box.label(text="Tab into Edit Mode and select vertices", icon="INFO")


classes = (RECONSTRUCT_OT_set_scale, RECONSTRUCT_OT_set_ground, RECONSTRUCT_OT_reset_frame)
