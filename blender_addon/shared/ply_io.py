"""PLY files as numpy arrays: the one reader and writer both sides use.

Pure Python + numpy (no bpy, no plyfile): the backend writes the dense
cloud and the mesh with it, the add-on reads them (and PLYs from other
tools) with it. Vertices come back as a structured array with the file's own
property names; faces as an [F, 3] index array (polygons are fanned into
triangles).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
          "f4": "float", "f8": "double"}


@dataclass
class Ply:
    vertices: np.ndarray  # structured [N], fields named as in the file
    faces: np.ndarray  # [F, 3] int64 (empty for point clouds)

    def column(self, *names: str, dtype=np.float32) -> np.ndarray:
        """[N, len(names)] array of the named vertex properties."""
        v = self.vertices
        if not len(v):
            return np.zeros((0, len(names)), dtype)
        fields = v.dtype.fields
        f4 = np.dtype("<f4")
        if np.dtype(dtype) == f4 and v.flags.c_contiguous and v.dtype.itemsize % 4 == 0 and \
                all(fields[n][0] == f4 and fields[n][1] % 4 == 0 for n in names):
            # Float32 properties (splat files hold only those): one gather from the records seen as a
            # float matrix, not one strided copy per property (3M splats: 6 s -> under 1 s).
            # The result is the transpose of a [len(names), N] array: each property's values are
            # contiguous (result[:, i] is a view foreach_set takes without a copy).
            floats = v.view(np.uint8).reshape(len(v), v.dtype.itemsize).view(f4)
            return floats.T[[fields[n][1] // 4 for n in names]].T
        return np.stack([v[n].astype(dtype) for n in names], axis=1)

    def has(self, *names: str) -> bool:
        return all(n in (self.vertices.dtype.names or ()) for n in names)


class PlyError(ValueError):
    pass


def read_ply(path: str | Path) -> Ply:
    data = Path(path).read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError(f"{path} is not a PLY file")
    body_start = data.index(b"\n", end) + 1
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, elements = None, []
    for line in header[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                elements[-1][2].append((words[4], "list", _type(words[2], path), _type(words[3], path)))
            else:
                elements[-1][2].append((words[2], _type(words[1], path), None, None))
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise PlyError(f"{path}: unsupported PLY format {fmt!r}")
    if fmt == "ascii":
        return _read_ascii(data[body_start:].decode("ascii", errors="replace"), elements, path)
    order = "<" if fmt == "binary_little_endian" else ">"
    pos, vertices, faces = body_start, None, np.zeros((0, 3), np.int64)
    for name, count, props in elements:
        if any(kind == "list" for _, kind, _, _ in props):
            if len(props) != 1:
                raise PlyError(f"{path}: element {name!r} mixes lists and scalars, which is not supported")
            _, _, count_type, index_type = props[0]
            polygons, pos = _read_lists(data, pos, count, order + count_type, order + index_type, path)
            if name == "face":
                faces = polygons
        else:
            dtype = np.dtype([(p, order + t) for p, t, _, _ in props])
            size = dtype.itemsize * count
            if pos + size > len(data):
                raise PlyError(f"{path} is truncated: element {name!r} needs {size} bytes")
            array = np.frombuffer(data, dtype, count, pos)
            pos += size
            if name == "vertex":
                # Native byte order is used as read (read-only, no copy of a large file).
                vertices = array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
    if vertices is None:
        raise PlyError(f"{path} has no vertex element")
    return Ply(vertices, faces)


def _type(name: str, path) -> str:
    if name not in _TYPES:
        raise PlyError(f"{path}: unknown PLY type {name!r}")
    return _TYPES[name]


def _read_lists(data: bytes, pos: int, count: int, count_type: str, index_type: str, path):
    """Face lists. Fast path: every face has the same number of corners."""
    if count == 0:
        return np.zeros((0, 3), np.int64), pos
    ctype, itype = np.dtype(count_type), np.dtype(index_type)
    first = int(np.frombuffer(data, ctype, 1, pos)[0])
    row = np.dtype([("n", ctype), ("v", itype, (first,))])
    if pos + row.itemsize * count <= len(data):
        rows = np.frombuffer(data, row, count, pos)
        if np.all(rows["n"] == first):
            return _fan(rows["v"].astype(np.int64)), pos + row.itemsize * count
    tris = []
    for _ in range(count):  # mixed polygon sizes: rare, read one by one
        n = int(np.frombuffer(data, ctype, 1, pos)[0])
        pos += ctype.itemsize
        if pos + n * itype.itemsize > len(data):
            raise PlyError(f"{path} is truncated in its face list")
        tris.append(_fan(np.frombuffer(data, itype, n, pos).astype(np.int64)[None]))
        pos += n * itype.itemsize
    return np.concatenate(tris), pos


def _fan(polygons: np.ndarray) -> np.ndarray:
    """[F, n] polygons -> [F * (n - 2), 3] triangles."""
    n = polygons.shape[1]
    if n < 3:
        return np.zeros((0, 3), np.int64)
    return np.concatenate([polygons[:, [0, k, k + 1]] for k in range(1, n - 1)])


def _read_ascii(text: str, elements, path) -> Ply:
    lines = iter(text.splitlines())
    vertices, faces = None, np.zeros((0, 3), np.int64)
    for name, count, props in elements:
        rows = [next(lines).split() for _ in range(count)]
        if any(kind == "list" for _, kind, _, _ in props):
            if name == "face" and rows:
                faces = np.concatenate([_fan(np.array(r[1:1 + int(r[0])], np.int64)[None]) for r in rows])
        else:
            dtype = np.dtype([(p, t) for p, t, _, _ in props])
            array = np.zeros(count, dtype)
            values = np.array(rows, dtype=np.float64).reshape(count, len(props))
            for i, (p, _, _, _) in enumerate(props):
                array[p] = values[:, i]
            if name == "vertex":
                vertices = array
    if vertices is None:
        raise PlyError(f"{path} has no vertex element")
    return Ply(vertices, faces)


def write_ply(path: str | Path, vertices: dict[str, np.ndarray], faces: np.ndarray | None = None) -> None:
    """Binary little-endian PLY. ``vertices`` maps property name -> [N] array
    (its dtype is kept: float32 positions, uint8 colors); ``faces`` [F, 3]."""
    names = list(vertices)
    n = len(vertices[names[0]]) if names else 0
    dtype = np.dtype([(k, np.asarray(v).dtype.newbyteorder("<")) for k, v in vertices.items()])
    rows = np.empty(n, dtype)
    for k, v in vertices.items():
        rows[k] = v
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property {_NAMES[dtype[k].str[1:]]} {k}" for k in names]
    if faces is not None:
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        f.write(rows.tobytes())
        if faces is not None:
            face_rows = np.empty(len(faces), [("n", "u1"), ("v", "<i4", (3,))])
            face_rows["n"], face_rows["v"] = 3, faces
            f.write(face_rows.tobytes())
    tmp.replace(path)
