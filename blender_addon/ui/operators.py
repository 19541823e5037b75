"""Operators: start, cancel, check and set up the backend. Each returns at
once; the work happens in the backend and the timer in jobs.py."""
from __future__ import annotations

import sys

import bpy

from . import preferences
from ..link import setup_backend
from ..link.client import stage_device_lines
from ..link.jobs import UserError, redraw, runner


class RECONSTRUCT_OT_run(bpy.types.Operator):
    bl_idname = "reconstruct.run"
    bl_label = "Reconstruct"
    bl_description = "Reconstruct the photo folder in the background; Blender stays usable meanwhile"

    @classmethod
    def poll(cls, context):
        return not runner.running

    def execute(self, context):
        try:
            runner.start(context)
        except UserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, "Reconstruction started")
        return {"FINISHED"}


class RECONSTRUCT_OT_cancel(bpy.types.Operator):
    bl_idname = "reconstruct.cancel"
    bl_label = "Cancel"
    bl_description = ("Stop the running reconstruction; finished stages are kept in the workspace, and what "
                      "was already imported stays in the scene")

    @classmethod
    def poll(cls, context):
        return runner.running

    def execute(self, context):
        runner.cancel()
        return {"FINISHED"}


def _backend_status(handshake: dict) -> str:
    device = handshake.get("device", {})
    return "; ".join([f"Backend {handshake.get('backend_version')} ready on {device.get('type', '?')}: "
                      f"{device.get('name', '')}", *stage_device_lines(handshake, short=True)])


def show_stage_devices() -> float | None:
    """A timer: once the job runner has taken the backend's handshake (its
    status says ready), the status line also says where each stage runs."""
    client = runner.client
    if client is None or preferences.status["ok"] is False:
        return None  # the backend did not start: its status says why
    if client.handshake is None or preferences.status["ok"] is not True:
        return 0.2
    preferences.set_status(_backend_status(client.handshake), True)
    redraw(("PREFERENCES",))
    return None


class RECONSTRUCT_OT_check_backend(bpy.types.Operator):
    bl_idname = "reconstruct.check_backend"
    bl_label = "Check Backend"
    bl_description = "Start the backend and report its version, its device and where each stage will run"

    def execute(self, context):
        try:
            client = runner.ensure_backend(context)
        except UserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if client.handshake is not None:  # already running: its answer is here
            preferences.set_status(_backend_status(client.handshake), True)
            for line in stage_device_lines(client.handshake):
                self.report({"INFO"}, line)
        elif not bpy.app.timers.is_registered(show_stage_devices):
            bpy.app.timers.register(show_stage_devices, first_interval=0.2)
        return {"FINISHED"}


def _redraw_setup() -> float | None:
    redraw(("PREFERENCES",))
    return 0.5 if setup_backend.state.running else None


class RECONSTRUCT_OT_setup_backend(bpy.types.Operator):
    bl_idname = "reconstruct.setup_backend"
    bl_label = "Set Up Backend"
    bl_description = ("Create a Python environment for the backend and install it there "
                      "(downloads pycolmap, torch, ...; takes a few minutes)")

    base_python: bpy.props.StringProperty(name="Base Python", description="Python used to create the "
                                          "environment (default: Blender's own)")

    def execute(self, context):
        if setup_backend.state.running:
            self.report({"WARNING"}, "The backend is already being set up")
            return {"CANCELLED"}
        setup_backend.start(self.base_python or sys.executable, preferences.managed_venv())
        if setup_backend.state.error:
            self.report({"ERROR"}, setup_backend.state.error)
            return {"CANCELLED"}
        bpy.app.timers.register(_redraw_setup, first_interval=0.5)
        return {"FINISHED"}


classes = (RECONSTRUCT_OT_run, RECONSTRUCT_OT_cancel, RECONSTRUCT_OT_check_backend, RECONSTRUCT_OT_setup_backend)
