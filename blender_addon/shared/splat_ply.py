"""Gaussian splats in the standard 3D Gaussian Splatting PLY layout, as
numpy arrays: one reader and writer for the backend and the add-on.

The layout every splat viewer reads (Kerbl et al. 2023): per vertex, float32
    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3*K-1)  opacity  scale_0..2  rot_0..3
with opacity as a logit, scales as logs, rot as a (w, x, y, z) quaternion
(not necessarily unit), f_dc the degree-0 spherical-harmonic coefficient per
channel and f_rest the higher degrees stored channel after channel (all of
red's K coefficients, then green's, then blue's), K = (degree + 1)^2 - 1.
Files from other tools may have no f_rest (degree 0) and extra properties;
both are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ply_io import PlyError, read_ply, write_ply
from .splat_math import SH_C0, sh_coefficients  # colour = 0.5 + SH_C0 * f_dc

REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3")


@dataclass
class Splats:
    means: np.ndarray  # [N, 3]
    log_scales: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] (w, x, y, z)
    opacity_logits: np.ndarray  # [N]
    sh_dc: np.ndarray  # [N, 3]
    sh_rest: np.ndarray  # [N, K, 3], K = (degree + 1)^2 - 1 (read from a file: a strided view)

    def __len__(self) -> int:
        return len(self.means)

    @property
    def degree(self) -> int:
        return int(round(np.sqrt(self.sh_rest.shape[1] + 1))) - 1

    def colors(self) -> np.ndarray:
        """[N, 3] view-independent colour in 0..1 (the degree-0 term)."""
        return np.clip(0.5 + SH_C0 * self.sh_dc, 0.0, 1.0)

    def opacities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.opacity_logits))

    def scales(self) -> np.ndarray:
        return np.exp(self.log_scales)

    def sh_columns(self) -> list[np.ndarray]:
        """[N] arrays of each SH property, in sh_property_names's order (views where the layout allows)."""
        k = self.sh_rest.shape[1]
        return [self.sh_dc[:, c] for c in range(3)] + [self.sh_rest[:, j, c] for c in range(3) for j in range(k)]

    def unit_quats(self) -> np.ndarray:
        return self.quats / np.maximum(np.linalg.norm(self.quats, axis=1, keepdims=True), 1e-12)


def read_splats(path: str | Path) -> Splats:
    ply = read_ply(path)
    missing = [name for name in REQUIRED if not ply.has(name)]
    if missing:
        raise PlyError(f"{path} is not a Gaussian splat PLY: it lacks {', '.join(missing)}")
    names = ply.vertices.dtype.names
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]))
    if len(rest) % 3:
        raise PlyError(f"{path}: {len(rest)} f_rest properties is not a multiple of 3")
    k = len(rest) // 3
    if round(np.sqrt(k + 1)) ** 2 != k + 1:
        raise PlyError(f"{path}: {k} higher-order coefficients per channel is no spherical-harmonic degree")
    # Views of the file's columns (ply.column keeps each property contiguous): a file's SH are
    # most of its bytes, and the add-on hands each column to Blender as it is.
    sh_rest = ply.column(*rest).reshape(-1, 3, k).transpose(0, 2, 1) if k else \
        np.zeros((len(ply.vertices), 0, 3), np.float32)
    return Splats(ply.column("x", "y", "z"), ply.column("scale_0", "scale_1", "scale_2"),
                  ply.column("rot_0", "rot_1", "rot_2", "rot_3"), ply.column("opacity")[:, 0],
                  ply.column("f_dc_0", "f_dc_1", "f_dc_2"), sh_rest)


def sh_property_names(degree: int) -> list[str]:
    """The file's spherical-harmonic properties for `degree`, in the order of
    Splats.sh_columns: f_dc_0..2, then f_rest_0.. (channel after channel)."""
    return ["f_dc_0", "f_dc_1", "f_dc_2", *(f"f_rest_{i}" for i in range(3 * (sh_coefficients(degree) - 1)))]


def write_splats(path: str | Path, splats: Splats) -> None:
    n = len(splats)
    f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
    columns = {"x": splats.means[:, 0], "y": splats.means[:, 1], "z": splats.means[:, 2],
               "nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n)}
    columns.update({f"f_dc_{c}": splats.sh_dc[:, c] for c in range(3)})
    rest = splats.sh_rest.transpose(0, 2, 1).reshape(n, -1)  # channel after channel
    columns.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    columns["opacity"] = splats.opacity_logits
    columns.update({f"scale_{i}": splats.log_scales[:, i] for i in range(3)})
    columns.update({f"rot_{i}": splats.quats[:, i] for i in range(4)})
    write_ply(path, {k: f32(v) for k, v in columns.items()})
