"""The textured mesh's Wavefront OBJ, written by the backend's texture stage
and read back by tests; numpy only. Only the subset we write:
"v x y z [r g b]", "vt u v", triangles "f a/a b/b c/c" (one texture
coordinate per vertex: the atlas's vertices, so that every reader, Blender's
own importer and trimesh included, sees the same counts), one material.
The add-on builds the job's mesh from binary files instead (mesh.ply and
textured.glb, glb_io.py): parsing text would hold the GIL on its reader
thread while Blender's timer runs."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ObjMesh:
    vertices: np.ndarray  # [V, 3] float64
    rgb: np.ndarray | None  # [V, 3] uint8 sRGB, or None
    uv: np.ndarray  # [V, 2] float64, v up
    faces: np.ndarray  # [F, 3] int64, into vertices (and uv)
    texture: str | None  # the material's map_Kd, relative to the OBJ's folder


def write_obj(path: Path, vertices: np.ndarray, rgb: np.ndarray | None, uv: np.ndarray, faces: np.ndarray,
              texture: str, material: str = "reconstruct_texture") -> None:
    """path.obj and its .mtl beside it, naming `texture` (a file name in the same folder)."""
    path = Path(path)
    mtl = path.with_suffix(".mtl")
    mtl.write_text(f"# Reconstruct: the photos' colours as a texture atlas\nnewmtl {material}\nKa 1 1 1\n"
                   f"Kd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {texture}\n")
    out = io.StringIO()
    out.write(f"# Reconstruct textured mesh: {len(vertices)} vertices, {len(faces)} faces\n")
    out.write(f"mtllib {mtl.name}\no textured\n")
    if rgb is not None:
        np.savetxt(out, np.hstack([vertices, np.asarray(rgb, np.float64) / 255.0]),
                   fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(out, vertices, fmt="v %.6f %.6f %.6f")
    np.savetxt(out, uv, fmt="vt %.7f %.7f")
    out.write(f"usemtl {material}\ns 1\n")
    np.savetxt(out, np.repeat(faces.astype(np.int64) + 1, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    path.write_text(out.getvalue())


def read_obj(path: Path) -> ObjMesh:
    """A textured.obj back. Raises ValueError naming the file when it is not one of ours."""
    path = Path(path)
    text = path.read_bytes()
    v = re.findall(rb"^v ([^\n]*)", text, re.M)
    vt = re.findall(rb"^vt ([^\n]*)", text, re.M)
    f = re.findall(rb"^f ([^\n]*)", text, re.M)
    try:
        columns = len(v[0].split()) if v else 3
        vertices = np.array(b" ".join(v).split(), np.float64).reshape(len(v), columns)
        uv = np.array(b" ".join(vt).split(), np.float64).reshape(len(vt), 2)
        corners = np.array(b" ".join(f).replace(b"/", b" ").split(), np.int64).reshape(len(f), 6)
    except ValueError:
        raise ValueError(f"{path} is not a textured mesh as Reconstruct writes it (v/vt/f lines)") from None
    faces = corners[:, ::2] - 1
    if len(uv) != len(vertices) or not np.array_equal(faces, corners[:, 1::2] - 1):
        raise ValueError(f"{path}: texture coordinates do not match the vertices one to one")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"{path}: face indices out of range for {len(vertices)} vertices")
    rgb = None
    if columns >= 6:
        rgb = np.clip(np.round(vertices[:, 3:6] * 255), 0, 255).astype(np.uint8)
    texture = None
    mtl = re.search(rb"^mtllib (.+)$", text, re.M)
    if mtl and (path.parent / mtl.group(1).decode().strip()).is_file():
        found = re.search(r"^map_Kd (.+)$", (path.parent / mtl.group(1).decode().strip()).read_text(), re.M)
        texture = found.group(1).strip() if found else None
    return ObjMesh(vertices[:, :3], rgb, uv, faces, texture)
