"""Rendering trained splats: the rasteriser for a device, and one camera's
image from a splat file (the render call the add-on's previews use)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from blender_addon.shared.splat_ply import Splats, read_splats


def rasterizer(device):
    """gsplat's CUDA rasteriser on a GPU, our torch one elsewhere; the same
    call and results (see splat_raster.py)."""
    if device.type == "cuda":
        from gsplat import rasterization

        # Non-packed: the densification strategies read per-camera [C, N] info.
        return functools.partial(rasterization, packed=False)
    from backend.splats.raster import rasterize

    return rasterize


def splat_tensors(splats: Splats, device) -> dict:
    """The training parameters (gsplat's names and conventions) of a splat file."""
    import torch

    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return {"means": t(splats.means), "scales": t(splats.log_scales), "quats": t(splats.quats),
            "opacities": t(splats.opacity_logits), "sh0": t(splats.sh_dc[:, None, :]), "shN": t(splats.sh_rest)}


def render_params(params: dict, viewmat, K, width: int, height: int, sh_degree: int, device, background=None):
    """(rgb [H, W, 3], alpha [H, W, 1], info) of one camera; `params` as in splat_tensors."""
    import torch

    colors = torch.cat([params["sh0"], params["shN"]], 1)
    backgrounds = None if background is None else torch.as_tensor(background, dtype=torch.float32,
                                                                    device=device).reshape(1, 3)
    rgb, alpha, info = rasterizer(device)(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        colors, viewmat[None], K[None], width, height, sh_degree=sh_degree, backgrounds=backgrounds)
    return rgb[0], alpha[0], info


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime: float) -> Splats:
    return read_splats(path)


def render_camera(ply: str | Path, R, t, fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                  device_name: str = "auto") -> np.ndarray:
    """[H, W, 4] float32 RGBA of the splats in `ply` seen by a pinhole camera
    (COLMAP convention: x_cam = R @ x_world + t, pixel centres at +0.5).
    Alpha is the splats' coverage; colour is premultiplied by it (over black)."""
    import torch

    from backend.job.device import choose_device

    ply = Path(ply)
    splats = _load(str(ply), ply.stat().st_mtime)
    device = choose_device(device_name, "splat render")
    viewmat = torch.eye(4, device=device)
    viewmat[:3, :3] = torch.as_tensor(np.asarray(R, np.float32), device=device)
    viewmat[:3, 3] = torch.as_tensor(np.asarray(t, np.float32), device=device)
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float32, device=device)
    with torch.no_grad():
        rgb, alpha, _ = render_params(splat_tensors(splats, device), viewmat, K, int(width), int(height),
                                      splats.degree, device)
    return torch.cat([rgb, alpha], -1).clamp(0, 1).cpu().numpy()
