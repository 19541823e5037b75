"""Colour levelling, so that a seam between two photos does not show.

Photos differ in exposure and white balance. Two steps, as the issue asks:
1. a global gain per photo and channel, from the faces several photos see:
   in log colour, each face's colour in each photo is its true colour plus
   the photo's gain; solved by alternating means (medians, for robustness to
   occlusion and speculars), with the gains' mean fixed at zero;
2. a local correction field (the global adjustment of Waechter et al. 2014):
   an additive colour offset per (mesh vertex, photo) pair, which makes the
   photos meet at their mean on every seam vertex and varies as smoothly as
   possible across each patch (a sparse least-squares problem: one equation
   per seam vertex and photo, one per edge inside a patch). Texels take the
   offset interpolated from their face's corners, so the correction fades
   away from the seams instead of stepping.
"""
from __future__ import annotations

import numpy as np

from backend.texture.photos import Photos, bilinear
from backend.texture.views import Projection

GAIN_ROUNDS = 8
MAX_GAIN = 2.0
SMOOTH_WEIGHT = 1.0  # edges inside a patch, against 1 for each seam equation
TIKHONOV = 1e-3  # keeps vertices no seam reaches at no correction


def sample_small(photos: Photos, view: int, xy: np.ndarray) -> np.ndarray:
    image, scale = photos.small(view)
    return bilinear(image, xy[:, 0] * scale, xy[:, 1] * scale)


def face_colours(photos: Photos, projections: dict[int, Projection], quality: np.ndarray) -> np.ndarray:
    """[F, N, 3] each face's colour at its centre in each photo that sees it (the small,
    blurred photos), NaN where the photo does not see it."""
    colours = np.full(quality.shape + (3,), np.nan, np.float32)
    for view, proj in projections.items():
        seen = np.nonzero(quality[:, view] > 0)[0]
        colours[seen, view] = sample_small(photos, view, proj.xy[seen].mean(1))
    return colours


def photo_gains(colours: np.ndarray) -> np.ndarray:
    """[N, 3] multiplicative gain per photo and channel, from face_colours."""
    num_views = colours.shape[1]
    shared = (np.isfinite(colours[..., 0]).sum(1) >= 2)
    if shared.sum() < 10:
        return np.ones((num_views, 3))
    c = colours[shared].astype(np.float64)
    c[(c <= 8) | (c >= 247)] = np.nan  # black or clipped: no exposure information
    log_colour = np.log(np.where(np.isfinite(c), np.maximum(c, 1e-3), np.nan))
    gains = np.zeros((num_views, 3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # faces or photos with no finite colour
        for _ in range(GAIN_ROUNDS):
            truth = np.nanmean(log_colour + gains[None], axis=1, keepdims=True)
            gains = np.nan_to_num(np.nanmedian(truth - log_colour, axis=0))
            gains -= gains.mean(0, keepdims=True)
    return np.clip(np.exp(gains), 1 / MAX_GAIN, MAX_GAIN)


def seam_offsets(photos: Photos, projections: dict[int, Projection], faces: np.ndarray, labels: np.ndarray,
                 gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The local correction: [K, 3] colour offsets (0-255 units) and [F, 3]
    the row of each face corner's (vertex, photo) pair in them (-1 for faces
    no photo colours)."""
    from scipy.sparse import coo_matrix, identity
    from scipy.sparse.linalg import splu

    seen = np.nonzero(labels >= 0)[0]
    index = np.full(faces.shape, -1, np.int64)
    if not len(seen):
        return np.zeros((0, 3)), index
    num_vertices = int(faces.max()) + 1
    pair = faces[seen].astype(np.int64) * (labels.max() + 1) + labels[seen, None]
    keys, inverse = np.unique(pair.ravel(), return_inverse=True)
    index[seen] = inverse.reshape(-1, 3)
    vertex, label = keys // (labels.max() + 1), keys % (labels.max() + 1)
    # Each pair's colour at its vertex in its photo (gains applied).
    colour = np.zeros((len(keys), 3))
    corner_face = np.repeat(seen, 3)
    corner_k = np.tile(np.arange(3), len(seen))
    first = np.unique(inverse, return_index=True)[1]
    for view in np.unique(label):
        mine = np.nonzero(label == view)[0]
        corners = first[mine]
        xy = projections[int(view)].xy[corner_face[corners], corner_k[corners]]
        colour[mine] = sample_small(photos, int(view), xy) * gains[view]
    # Seam vertices: more than one photo meets there.
    count = np.bincount(vertex, minlength=num_vertices)
    on_seam = count[vertex] >= 2
    target = np.zeros((num_vertices, 3))
    np.add.at(target, vertex, colour)
    target /= np.maximum(count, 1)[:, None]
    seam_rows = np.nonzero(on_seam)[0]
    # Edges inside patches: corners of one face share the face's photo.
    local = inverse.reshape(-1, 3)
    a = np.concatenate([local[:, 0], local[:, 1], local[:, 2]])
    b = np.concatenate([local[:, 1], local[:, 2], local[:, 0]])
    n = len(keys)
    # Normal equations of: sum over seam pairs (g - (t - c))^2 + w * sum over edges (g_a - g_b)^2 + eps * g^2.
    seam_diag = coo_matrix((np.ones(len(seam_rows)), (seam_rows, seam_rows)), shape=(n, n))
    edge_ones = np.full(len(a), SMOOTH_WEIGHT)
    laplacian = coo_matrix((np.concatenate([edge_ones, edge_ones, -edge_ones, -edge_ones]),
                            (np.concatenate([a, b, a, b]), np.concatenate([a, b, b, a]))), shape=(n, n))
    system = (seam_diag + laplacian + TIKHONOV * identity(n)).tocsc()
    rhs = np.zeros((n, 3))
    rhs[seam_rows] = target[vertex[seam_rows]] - colour[seam_rows]
    offsets = splu(system).solve(rhs)
    return offsets, index
