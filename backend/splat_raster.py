"""A differentiable Gaussian-splat rasteriser in plain torch, for machines
without CUDA.

gsplat's `rasterization` needs CUDA (its pure-torch reference still composites
with a CUDA kernel), so on the CPU training and rendering use this one. It
follows gsplat's conventions so the two are interchangeable and comparable
(tests/test_splat_train.py compares them where CUDA is present):

- EWA projection with gsplat's Jacobian clipping, a 0.3 px^2 blur added to the
  2D covariance, an opacity-aware 3-sigma box (at most 3.33 sigma) and 16 px
  tiles; pixel centres at +0.5;
- front-to-back alpha compositing per pixel, alpha = min(0.999, o * exp(-q)),
  contributions under 1/255 skipped, a pixel finished once its transmittance
  would fall below 1e-4;
- SH colours evaluated per camera from the direction camera -> splat, +0.5,
  clamped at 0.

The compositing is vectorised without loops over splats: every (tile, splat)
pair is listed, sorted by tile then depth, and evaluated on the tile's pixels;
the transmittance is an exclusive cumulative sum of log(1 - alpha) within each
tile's run of pairs (in float64, so long runs do not lose precision), and the
weighted colours are scattered into the image. Pairs are processed in chunks
of whole tiles to bound memory.
"""
from __future__ import annotations

import math

import torch

TILE = 4
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
MAX_EXTEND = 3.33
CHUNK_PIXELS = 1 << 22  # pair-pixel evaluations per chunk (~40 bytes each with autograd)

_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
          0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """[..., (degree + 1)^2] real spherical-harmonic basis at unit `dirs` [..., 3]
    (the 3DGS / gsplat ordering and signs)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_SH_C2[0] * xy, _SH_C2[1] * yz, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * xz,
                _SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * xy * z, _SH_C3[2] * y * (4 * zz - xx - yy),
                _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
                _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotations from (w, x, y, z) quaternions, normalised first."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
              sh_degree: int | None = None, backgrounds: torch.Tensor | None = None, near_plane: float = 0.01,
              far_plane: float = 1e10, **_ignored) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render splats into C cameras; the arguments and results mean what they
    mean for `gsplat.rasterization` (non-packed): means [N, 3], quats [N, 4],
    scales [N, 3] (not logs), opacities [N] (not logits), colors [N, K, 3] SH
    coefficients when `sh_degree` is given (else [N, 3] RGB), viewmats [C, 4, 4]
    world -> camera, Ks [C, 3, 3]. Returns images [C, H, W, 3], alphas
    [C, H, W, 1] and info with means2d [C, N, 2] (pixels, for densification
    gradients), radii [C, N, 2], depths, width, height, n_cameras."""
    rotations = quat_to_rotmat(quats)
    scaled = rotations * scales[:, None, :]
    covars = scaled @ scaled.transpose(1, 2)
    projected = [_project(means, covars, viewmats[c], Ks[c], width, height) for c in range(len(viewmats))]
    # One tensor that every camera's image depends on: its gradient drives densification.
    means2d = torch.stack([p[0] for p in projected])
    images, alphas, radii = [], [], []
    for c, (_, cov2d, z) in enumerate(projected):
        image, alpha, r = _render_one(means2d[c], cov2d, z, opacities, colors, means, viewmats[c], width, height,
                                      sh_degree, near_plane, far_plane)
        if backgrounds is not None:
            image = image + (1 - alpha) * backgrounds[c]
        images.append(image)
        alphas.append(alpha)
        radii.append(r)
    info = {"means2d": means2d, "radii": torch.stack(radii), "depths": torch.stack([p[2] for p in projected]),
            "width": width, "height": height, "n_cameras": len(viewmats), "gaussian_ids": None}
    return torch.stack(images), torch.stack(alphas), info


def _project(means, covars, viewmat, K, width, height):
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    mc = means @ R.T + t
    x, y, z = mc.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    # Like gsplat: the Jacobian of splats far outside the view is taken at the
    # view's edge (plus 30%), which keeps their footprint bounded.
    zs = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    tx = zs * torch.clamp(x / zs, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = zs * torch.clamp(y / zs, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).reshape(-1, 2, 3)
    JR = J @ R
    cov2d = JR @ covars @ JR.transpose(1, 2)
    mean2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    return mean2d, cov2d, z


def _render_one(mean2d, cov2d, z, opacities, colors, means, viewmat, width, height, sh_degree, near, far):
    a = cov2d[:, 0, 0] + EPS2D
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + EPS2D
    det = a * c - b * b
    with torch.no_grad():
        opac = opacities.detach()
        extend = torch.clamp(torch.sqrt(2 * torch.log(torch.clamp(opac / ALPHA_MIN, min=1.0))), max=MAX_EXTEND)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp(min=0)))
        m = mean2d.detach()
        valid = ((z.detach() >= near) & (z.detach() <= far) & (det.detach() > 0) & (opac >= ALPHA_MIN)
                 & ((rx > 0) | (ry > 0))
                 & (m[:, 0] + rx > 0) & (m[:, 0] - rx < width) & (m[:, 1] + ry > 0) & (m[:, 1] - ry < height))
        radii = torch.stack([rx, ry], -1).where(valid[:, None], torch.zeros(())).to(torch.int32)

    tiles_w, tiles_h = math.ceil(width / TILE), math.ceil(height / TILE)
    image = torch.zeros(tiles_h * tiles_w, TILE * TILE, 4, dtype=means.dtype, device=means.device)
    ids = torch.nonzero(valid).squeeze(1)
    if len(ids):
        safe_det = torch.where(valid, det, torch.ones_like(det))
        conic = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
        rgb = _colors(means, colors, viewmat, sh_degree)
        ids = ids[torch.argsort(z.detach()[ids], stable=True)]
        _composite(image, ids, mean2d, conic, opacities, rgb, rx, ry, tiles_w, tiles_h)
    image = image.reshape(tiles_h, tiles_w, TILE, TILE, 4).permute(0, 2, 1, 3, 4)
    image = image.reshape(tiles_h * TILE, tiles_w * TILE, 4)[:height, :width]
    return image[..., :3], image[..., 3:], radii


def _colors(means, colors, viewmat, sh_degree):
    if sh_degree is None:
        return colors
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    campos = -R.T @ t
    dirs = torch.nn.functional.normalize(means - campos, dim=-1)
    k = (sh_degree + 1) ** 2
    basis = sh_basis(sh_degree, dirs)  # [N, k]
    return torch.clamp((basis[:, :, None] * colors[:, :k, :]).sum(1) + 0.5, min=0.0)


def _composite(image, ids, mean2d, conic, opacities, rgb, rx, ry, tiles_w, tiles_h):
    """Accumulate the splats `ids` (sorted near to far) into image [tiles, TILE^2, 4]."""
    device = image.device
    with torch.no_grad():
        m = mean2d.detach()[ids] / TILE
        x0 = torch.clamp(torch.floor(m[:, 0] - rx[ids] / TILE), 0, tiles_w).long()
        x1 = torch.clamp(torch.ceil(m[:, 0] + rx[ids] / TILE), 0, tiles_w).long()
        y0 = torch.clamp(torch.floor(m[:, 1] - ry[ids] / TILE), 0, tiles_h).long()
        y1 = torch.clamp(torch.ceil(m[:, 1] + ry[ids] / TILE), 0, tiles_h).long()
        nx, ny = x1 - x0, y1 - y0
        counts = nx * ny
        splat = torch.repeat_interleave(torch.arange(len(ids), device=device), counts)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(splat), device=device) - first[splat]
        tile = (y0[splat] + local // nx[splat]) * tiles_w + x0[splat] + local % nx[splat]
        # Splats are in depth order, so a stable sort by tile keeps each tile's run near to far.
        tile, order = torch.sort(tile, stable=True)
        pair_ids = ids[splat[order]]
        # Chunks end at tile boundaries.
        bounds = torch.searchsorted(tile, torch.arange(tiles_w * tiles_h + 1, device=device)).tolist()
        # Monomials of the pixel centres within a tile: sigma is quadratic in them.
        off = torch.arange(TILE, device=device, dtype=mean2d.dtype) + 0.5
        oy, ox = (v.reshape(-1) for v in torch.meshgrid(off, off, indexing="ij"))
        monomials = torch.stack([torch.ones_like(ox), ox, oy, ox * ox, oy * oy, ox * oy])  # [6, TILE^2]
    step = max(1, CHUNK_PIXELS // (TILE * TILE))
    start = 0
    while start < len(tile):
        end = start + step
        if end < len(tile):
            t_end = int(tile[end])
            end = bounds[t_end] if bounds[t_end] > start else bounds[t_end + 1]
        t, g = tile[start:end], pair_ids[start:end]
        weight = _pair_weights(t, g, monomials, mean2d, conic, opacities, tiles_w)
        values = weight[..., None] * torch.cat([rgb[g], torch.ones_like(rgb[g][:, :1])], -1)[:, None, :]
        image.index_add_(0, t, values)  # [tiles, TILE^2, 4]
        start = end


def _pair_weights(tile, gid, monomials, mean2d, conic, opacities, tiles_w):
    """[P, TILE^2] compositing weights T * alpha of each (tile, splat) pair on the tile's pixels."""
    # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = tile origin - mean + pixel
    # offset: a quadratic in the offsets, so one matmul evaluates every pixel.
    ux = (tile % tiles_w) * TILE - mean2d[gid, 0]
    uy = (tile // tiles_w) * TILE - mean2d[gid, 1]
    a, b, c = conic[gid].unbind(-1)
    coeffs = torch.stack([0.5 * (a * ux * ux + c * uy * uy) + b * ux * uy, a * ux + b * uy, c * uy + b * ux,
                          0.5 * a, 0.5 * c, b], -1)
    sigma = coeffs @ monomials
    alpha = torch.clamp(opacities[gid][:, None] * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = alpha * ((sigma >= 0) & (alpha >= ALPHA_MIN))
    log_keep = torch.log1p(-alpha)
    # The first pair of each tile's run, for a segmented cumulative sum.
    new_run = torch.ones_like(tile, dtype=torch.bool)
    new_run[1:] = tile[1:] != tile[:-1]
    run_start = torch.cummax(torch.where(new_run, torch.arange(len(tile), device=tile.device), 0), 0).values

    def exclusive(values):  # float64: a long run of small logs must not lose precision
        values = values.double()
        before = torch.cumsum(values, 0) - values
        return before - before[run_start]

    with torch.no_grad():  # the pairs a pixel still takes: its transmittance stays above T_MIN
        taken = (exclusive(log_keep) + log_keep) > math.log(T_MIN)
    log_keep = log_keep * taken
    return torch.exp(exclusive(log_keep)).to(alpha.dtype) * alpha * taken
