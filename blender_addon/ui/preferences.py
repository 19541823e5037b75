"""Add-on preferences: where the backend lives, where workspaces go, which
device to use; and the 'Set up backend' button that installs one."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from ..link import install_plan, setup_backend
from ..link.setup_backend import venv_python
from ..shared.protocol import __version__

ADDON_ID = __package__.rpartition(".")[0]  # the add-on itself (this module lives in its ui/ folder)


def get(context=None) -> "ReconstructPreferences":
    context = context or bpy.context
    return context.preferences.addons[ADDON_ID].preferences


def source_checkout() -> Path | None:
    """The project folder when the add-on is loaded from a source checkout."""
    root = Path(__file__).resolve().parents[2]  # a source checkout: blender_addon/ui/ -> the repo
    return root if (root / "backend" / "__main__.py").exists() else None


def managed_venv() -> Path:
    """Where 'Set up backend' puts the backend's environment: one shared by every Blender
    (of the same Python), outside Blender's per-version folders; RECONSTRUCT_HOME moves it."""
    system = install_plan.detect(gpu=False).os
    return install_plan.shared_root(system, os.environ, Path.home()) / install_plan.env_name(sys.version_info[:2])


def detect_backend_python() -> str:
    """The shared environment if it is complete (made by any Blender), else a source checkout's .venv."""
    candidates = []
    if setup_backend.env_status(managed_venv(), __version__).state in ("ready", "outdated"):
        candidates.append(venv_python(managed_venv()))
    if (root := source_checkout()) is not None:
        candidates.append(venv_python(root / ".venv"))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return ""


def backend_python(context=None) -> str:
    prefs = get(context)
    return bpy.path.abspath(prefs.backend_python) if prefs.backend_python else detect_backend_python()


def workspace_root(context=None) -> Path:
    prefs = get(context)
    if prefs.workspace_root:
        return Path(bpy.path.abspath(prefs.workspace_root))
    if bpy.data.filepath:
        return Path(bpy.data.filepath).parent / "reconstructions"
    return Path.home() / "Reconstruct"


# What the status line says; filled by the backend check and the job runner.
status = {"text": "Backend not checked yet", "ok": None}
_status_lock = threading.Lock()


def set_status(text: str, ok: bool | None) -> None:
    with _status_lock:
        status.update(text=text, ok=ok)


class ReconstructPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter of the backend's environment (empty: detected automatically)")
    workspace_root: StringProperty(
        name="Workspace Folder", subtype="DIR_PATH",
        description="Where each job's workspace folder is created (empty: 'reconstructions' beside the "
                    ".blend file, or ~/Reconstruct)")
    device: EnumProperty(name="Device", items=[("auto", "Auto", "GPU when available, else CPU"),
                                               ("cuda", "GPU", "CUDA GPU"), ("cpu", "CPU", "CPU only")],
                         default="auto")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_python")
        if not self.backend_python:
            col.label(text=f"Detected: {detect_backend_python() or 'none'}", icon="INFO")
        col.prop(self, "workspace_root")
        col.prop(self, "device")
        env = setup_backend.env_status(managed_venv(), __version__)
        layout.label(text=env.text, icon={"ready": "CHECKMARK", "outdated": "ERROR"}.get(env.state, "INFO"))
        row = layout.row()
        label = "Update Backend" if env.state == "outdated" else "Set Up Backend"
        row.operator("reconstruct.setup_backend", text=label, icon="CONSOLE")
        row.operator("reconstruct.check_backend", icon="CHECKMARK")
        icon = {True: "CHECKMARK", False: "ERROR", None: "QUESTION"}[status["ok"]]
        layout.label(text=status["text"], icon=icon)
        setup_backend.draw_progress(layout)


class RECONSTRUCT_OT_cancel_setup(bpy.types.Operator):
    bl_idname = "reconstruct.cancel_setup"
    bl_label = "Cancel Setup"
    bl_description = ("Stop installing the backend; the environment is left unfinished and the next Set Up "
                      "Backend finishes it")

    @classmethod
    def poll(cls, context):
        return setup_backend.state.running

    def execute(self, context):
        setup_backend.cancel()
        return {"FINISHED"}


classes = (ReconstructPreferences, RECONSTRUCT_OT_cancel_setup)
