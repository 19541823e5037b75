"""The texture stage's textured.glb read back for the add-on: positions, the
atlas's texture coordinates and the triangles, straight from the binary
buffer (numpy views, no text to parse: the reader thread must not hold the
GIL long while Blender's timer runs). Only the subset trimesh writes for us:
one mesh, one primitive, float32 POSITION and TEXCOORD_0, uint32 indices."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


@dataclass
class GlbMesh:
    positions: np.ndarray  # [V, 3] float32, glTF's frame (+Y up)
    uv: np.ndarray  # [V, 2] float32, glTF's convention (v down from the image's top)
    faces: np.ndarray  # [F, 3] int64


def read_glb(path: Path) -> GlbMesh:
    """Raises ValueError naming the file when it is not a glTF binary of that shape."""
    path = Path(path)
    data = path.read_bytes()
    try:
        magic, version, _ = struct.unpack_from("<4sII", data, 0)
        if magic != b"glTF" or version != 2:
            raise ValueError("not a glTF 2.0 binary")
        json_length, json_type = struct.unpack_from("<I4s", data, 12)
        tree = json.loads(data[20:20 + json_length])
        bin_at = 20 + json_length
        bin_length, bin_type = struct.unpack_from("<I4s", data, bin_at)
        if json_type != b"JSON" or bin_type != b"BIN\x00":
            raise ValueError("unexpected chunks")
        blob = memoryview(data)[bin_at + 8: bin_at + 8 + bin_length]
        primitive = tree["meshes"][0]["primitives"][0]

        def accessor(index: int) -> np.ndarray:
            acc = tree["accessors"][index]
            view = tree["bufferViews"][acc["bufferView"]]
            dtype = np.dtype(_COMPONENTS[acc["componentType"]])
            width = _WIDTH[acc["type"]]
            start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
            flat = np.frombuffer(blob, dtype, acc["count"] * width, start)
            return flat.reshape(acc["count"], width) if width > 1 else flat

        positions = accessor(primitive["attributes"]["POSITION"])
        uv = accessor(primitive["attributes"]["TEXCOORD_0"])
        faces = accessor(primitive["indices"]).astype(np.int64).reshape(-1, 3)
    except (KeyError, IndexError, TypeError, struct.error, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not a textured mesh as Reconstruct writes it ({exc})") from None
    if len(faces) and (faces.min() < 0 or faces.max() >= len(positions)) or len(uv) != len(positions):
        raise ValueError(f"{path}: indices or texture coordinates do not match its {len(positions)} vertices")
    return GlbMesh(positions.astype(np.float32), uv.astype(np.float32), faces)
