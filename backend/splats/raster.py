"""A differentiable Gaussian-splat rasteriser in plain torch, for machines
without CUDA.

gsplat's `rasterization` needs CUDA (its pure-torch reference still composites
with a CUDA kernel), so on the CPU training and rendering use this one. It
follows gsplat's conventions so the two are interchangeable and comparable
(tests/test_splat_train.py compares them where CUDA is present):

The conventions shared with the add-on's viewport drawing are in
blender_addon/shared/splat_math.py:
- EWA projection with gsplat's Jacobian clipping, a 0.3 px^2 blur added to the
  2D covariance and an opacity-aware 3-sigma box (at most 3.33 sigma); pixel
  centres at +0.5;
- front-to-back alpha compositing per pixel, alpha = min(0.999, o * exp(-q)),
  contributions under 1/255 skipped, a pixel finished once its transmittance
  would fall below 1e-4;
- SH colours evaluated per camera from the direction camera -> splat, +0.5,
  clamped at 0.

The compositing is vectorised without loops over splats: every (4x4 px tile,
splat) pair is listed, sorted by tile then depth, and evaluated on the tile's
pixels with one matmul (the exponent is a quadratic in the pixel offsets);
the pixel-pairs that contribute are kept, transmittance is a cumulative sum
of log(1 - alpha) within each pixel's run (float64), and the weighted colours
are summed per pixel. Its gradient is written out by hand (_TileComposite),
as gsplat's CUDA backward is: autograd through those steps keeps a dozen
tensors per pixel-pair and ran 3-4x slower. Pairs are processed in chunks of
whole tiles to bound memory.
"""
from __future__ import annotations

import bisect
import math

import torch

from blender_addon.shared.splat_math import ALPHA_MAX, ALPHA_MIN, EPS2D, MAX_EXTEND, NEAR_PLANE, sh_basis_terms

TILE = 4
T_MIN = 1e-4
CHUNK_PIXELS = 1 << 22  # pair-pixel evaluations per chunk (~50 bytes each while computed, 8 kept for backward)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """[..., (degree + 1)^2] real spherical-harmonic basis at unit `dirs` [..., 3]
    (the 3DGS / gsplat ordering and signs)."""
    return torch.stack(sh_basis_terms(degree, *dirs.unbind(-1)), -1)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotations from (w, x, y, z) quaternions, normalised first."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
              sh_degree: int | None = None, backgrounds: torch.Tensor | None = None, near_plane: float = NEAR_PLANE,
              far_plane: float = 1e10, **_ignored) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render splats into C cameras; the arguments and results mean what they
    mean for `gsplat.rasterization` (non-packed): means [N, 3], quats [N, 4],
    scales [N, 3] (not logs), opacities [N] (not logits), colors [N, K, 3] SH
    coefficients when `sh_degree` is given (else [N, 3] RGB), viewmats [C, 4, 4]
    world -> camera, Ks [C, 3, 3]. Returns images [C, H, W, 3], alphas
    [C, H, W, 1] and info with means2d [C, N, 2] (pixels, for densification
    gradients), radii [C, N, 2], depths, width, height, n_cameras."""
    # The covariance is M M^T with M = R S; projecting M keeps everything 3-vectors.
    scaled = quat_to_rotmat(quats) * scales[:, None, :]
    projected = [_project(means, scaled, viewmats[c], Ks[c], width, height) for c in range(len(viewmats))]
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


def _project(means, scaled, viewmat, K, width, height):
    """Pixel centres [N, 2], 2D covariances (a, b, c: [[a, b], [b, c]], each [N])
    and depths [N] of splats with covariance `scaled` [N, 3, 3] times its transpose."""
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
    # The rows of J R, J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]; then
    # cov2d = (J R M)(J R M)^T. Written out: batched 3x3 products are slow on the CPU.
    jr0 = (fx / zs)[:, None] * R[0] - (fx * tx / zs**2)[:, None] * R[2]
    jr1 = (fy / zs)[:, None] * R[1] - (fy * ty / zs**2)[:, None] * R[2]
    u = (jr0[:, :, None] * scaled).sum(1)
    v = (jr1[:, :, None] * scaled).sum(1)
    cov2d = ((u * u).sum(-1), (u * v).sum(-1), (v * v).sum(-1))
    mean2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    return mean2d, cov2d, z


def _render_one(mean2d, cov2d, z, opacities, colors, means, viewmat, width, height, sh_degree, near, far):
    a, b, c = cov2d[0] + EPS2D, cov2d[1], cov2d[2] + EPS2D
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
    ids = torch.nonzero(valid).squeeze(1)
    if len(ids):
        safe_det = torch.where(valid, det, torch.ones_like(det))
        conic = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
        rgb = _colors(means, colors, viewmat, sh_degree)
        ids = ids[torch.argsort(z.detach()[ids], stable=True)]
        image = _composite(ids, mean2d, conic, opacities, rgb, rx, ry, tiles_w, tiles_h)
    else:
        image = torch.zeros(tiles_h * tiles_w, TILE * TILE, 4, dtype=means.dtype, device=means.device)
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


def _composite(ids, mean2d, conic, opacities, rgb, rx, ry, tiles_w, tiles_h) -> torch.Tensor:
    """[tiles, TILE^2, 4] premultiplied RGB and alpha of the splats `ids` (sorted near to far)."""
    device = mean2d.device
    n_tiles = tiles_w * tiles_h
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
        bounds = torch.searchsorted(tile, torch.arange(n_tiles + 1, device=device))
        # Monomials of the pixel centres within a tile: sigma is quadratic in them.
        off = torch.arange(TILE, device=device, dtype=mean2d.dtype) + 0.5
        oy, ox = (v.reshape(-1) for v in torch.meshgrid(off, off, indexing="ij"))
        monomials = torch.stack([torch.ones_like(ox), ox, oy, ox * ox, oy * oy, ox * oy])  # [6, TILE^2]
    # Chunks of whole tiles, each at most CHUNK_PIXELS pair-pixel evaluations
    # (or one tile, however many pairs it has).
    step = max(1, CHUNK_PIXELS // (TILE * TILE))
    cuts, t0, b = [0], 0, bounds.tolist()
    while t0 < n_tiles:
        t0 = max(t0 + 1, bisect.bisect_right(b, b[t0] + step) - 1)
        cuts.append(min(t0, n_tiles))
    # What each pair needs of its splat, gathered in one go (and scattered back in one).
    features = torch.cat([mean2d, conic, opacities[:, None], rgb], 1)
    parts = []
    for t0, t1 in zip(cuts[:-1], cuts[1:]):
        start, end = b[t0], b[t1]
        if start == end:
            parts.append(torch.zeros(t1 - t0, TILE * TILE, 4, dtype=mean2d.dtype, device=device))
            continue
        t = tile[start:end]
        mx, my, ca, cb, cc, opacity, *colour = features.index_select(0, pair_ids[start:end]).unbind(1)
        # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = tile origin - mean + pixel
        # offset: a quadratic in the offsets, so one matmul evaluates every pixel.
        ux = (t % tiles_w) * TILE - mx
        uy = (t // tiles_w) * TILE - my
        coeffs = torch.stack([0.5 * (ca * ux * ux + cc * uy * uy) + cb * ux * uy, ca * ux + cb * uy,
                              cc * uy + cb * ux, 0.5 * ca, 0.5 * cc, cb], -1)
        parts.append(_TileComposite.apply(coeffs, opacity, torch.stack(colour, 1), t - t0, monomials, t1 - t0))
    return torch.cat(parts)


def _runs(segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a non-decreasing [M] `segment`: the index of the first and of the
    last element of each element's run of equal values."""
    new = torch.ones_like(segment, dtype=torch.bool)
    new[1:] = segment[1:] != segment[:-1]
    starts = torch.nonzero(new).squeeze(1)
    run = torch.cumsum(new, 0) - 1
    ends = torch.cat([starts[1:], starts.new_tensor([len(segment)])]) - 1
    return starts.index_select(0, run), ends.index_select(0, run)


def _cumsum_within(values: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Inclusive cumulative sums of [M] `values` within runs (each element's
    run beginning at `first`), in float64: one cumulative sum over everything,
    minus what came before the run, must not lose a long run of small terms."""
    values = values.double()
    total = torch.cumsum(values, 0)
    return total - (total - values).index_select(0, first)


class _TileComposite(torch.autograd.Function):
    """Front-to-back compositing of (tile, splat) pairs, with its gradient
    written out (as gsplat's CUDA backward is) rather than traced by autograd.

    Only the pixel-pairs that contribute (alpha >= 1/255, about a fifth of a
    tile's pixels for a typical splat) are kept after the first evaluation:
    a list of M entries ordered by (pixel in tile, tile, depth), so each
    pixel's splats form a contiguous run and transmittance is a cumulative
    sum within runs.

    coeffs [P, 6] (sigma's quadratic in the pixel offsets), opacities [P] and
    rgb [P, 3] per pair; tile [P] (sorted). Returns [n_tiles, TILE^2, 4].

    With w_p = T_p alpha_p and T_p = prod_{q<p} (1 - alpha_q) per pixel:
    dL/dalpha_p = T_p (g . c_p) - S_p / (1 - alpha_p), S_p = sum_{q>p} w_q (g . c_q).
    """

    @staticmethod
    def forward(ctx, coeffs, opacities, rgb, tile, monomials, n_tiles):
        n_pairs = len(tile)
        sigma = monomials.T @ coeffs.T  # [TILE^2, P]
        alpha = opacities * torch.exp(-sigma)
        entry = torch.nonzero(((sigma >= 0) & (alpha >= ALPHA_MIN)).reshape(-1)).squeeze(1)
        alpha = torch.clamp(alpha.reshape(-1).index_select(0, entry), max=ALPHA_MAX)
        pixel, pair = entry // n_pairs, entry % n_pairs
        segment = pixel * n_tiles + tile.index_select(0, pair)  # non-decreasing: one run per pixel of the image
        first, last = _runs(segment)
        log_keep = torch.log1p(-alpha)
        before = _cumsum_within(log_keep, first) - log_keep
        # The splats a pixel takes: while its transmittance stays above T_MIN.
        alpha = alpha * ((before + log_keep) > math.log(T_MIN))
        transmittance = torch.exp(before).to(alpha.dtype)
        weight = transmittance * alpha
        out = torch.zeros(monomials.shape[1] * n_tiles, 4, dtype=alpha.dtype, device=alpha.device)
        out.index_add_(0, segment, torch.cat([rgb.index_select(0, pair), torch.ones_like(alpha)[:, None]], 1)
                       * weight[:, None])
        ctx.save_for_backward(opacities, rgb, monomials, entry, segment, first, last, alpha, transmittance)
        return out.reshape(-1, n_tiles, 4).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad):
        opacities, rgb, monomials, entry, segment, first, last, alpha, transmittance = ctx.saved_tensors
        pair = entry % len(opacities)
        weight = transmittance * alpha
        grad = grad.transpose(0, 1).reshape(-1, 4).index_select(0, segment)  # [M, 4], by (pixel, tile)
        d_weight = (grad[:, :3] * rgb.index_select(0, pair)).sum(1) + grad[:, 3]
        d_rgb = torch.zeros_like(rgb).index_add_(0, pair, weight[:, None] * grad[:, :3])
        upto = _cumsum_within(weight * d_weight, first)
        later = (upto.index_select(0, last) - upto).to(alpha.dtype)
        # Clamped (alpha = ALPHA_MAX) and skipped entries pass no gradient, as in gsplat.
        live = (alpha > 0) & (alpha < ALPHA_MAX)
        d_alpha = (transmittance * d_weight - later / (1 - alpha)) * live
        # alpha = o exp(-sigma): dalpha/do = alpha / o, dalpha/dsigma = -alpha.
        scaled = torch.zeros(monomials.shape[1], len(opacities), dtype=alpha.dtype, device=alpha.device)
        scaled.view(-1)[entry] = d_alpha * alpha
        d_opacities = scaled.sum(0) / opacities
        d_coeffs = -(monomials @ scaled).T
        return d_coeffs, d_opacities, d_rgb, None, None, None
