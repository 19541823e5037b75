"""Which photo colours each face: view selection as in Waechter, Moehrle and
Goesele, "Let There Be Color!" (ECCV 2014).

Each face may take its colour from a photo that sees it whole (a depth test
against the mesh itself), and among those prefers the one that sees it
large and head-on; neighbouring faces prefer the same photo, so that seams
are few. That is a Potts labelling problem: data cost per (face, photo),
plus a constant for every edge whose two faces differ. The paper solves it
with alpha-expansion graph cuts; we run iterated conditional modes from the
best photo per face, updating a random half of the faces per round so that
neighbours do not flip together. ICM finds a local minimum rather than
alpha-expansion's bound, but on these energies (one dominant photo per
region) it removes the small islands that make seams, in well under a second
for 300k faces with sparse matrix products, and needs no graph-cut package
the backend does not already have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.dense.scene import View
from backend.texture.raster import rasterize

VISIBILITY_SIZE = 1600  # longest side of the depth buffers the visibility test renders
DEPTH_TOLERANCE = 0.01  # a sample is visible when within 1% of the buffer's depth
MIN_COS = 0.1  # faces seen more edge-on than ~84 degrees do not take colour from that photo
SMOOTHNESS = 0.6  # cost of a seam edge, against data costs in [0, 1]
ROUNDS = 12
SMALL_PATCH = 8  # patches of fewer faces join a neighbouring photo that sees them (each chart costs padding)
MERGE_ROUNDS = 4
OUTLIER_COLOUR = 40.0  # 0-255 RGB distance below which a photo's colour for a face is never an outlier


@dataclass
class Projection:
    """The faces' corners in one photo: pixels and depths."""

    xy: np.ndarray  # [F, 3, 2] pixel coordinates at the photo's full size
    depth: np.ndarray  # [F, 3] camera-space z


def project(view: View, vertices: np.ndarray, faces: np.ndarray) -> Projection:
    cam = vertices @ view.R.T + view.t
    z = cam[:, 2]
    safe = np.where(np.abs(z) > 1e-12, z, 1e-12)
    pix = (cam[:, :2] / safe[:, None]) * np.diag(view.K)[:2] + view.K[:2, 2]
    return Projection(pix[faces], z[faces])


def visible_faces(view: View, proj: Projection) -> np.ndarray:
    """[F] bool: faces in front of the camera, inside the photo, and not hidden
    by other faces at the centre and near each corner (a depth test against a
    buffer of the mesh rendered from this photo)."""
    scale = min(1.0, VISIBILITY_SIZE / max(view.width, view.height))
    w, h = max(1, round(view.width * scale)), max(1, round(view.height * scale))
    xy, z = proj.xy * scale, proj.depth
    front = (z > 1e-9).all(1)
    inside = front & (xy[..., 0] >= 0).all(1) & (xy[..., 0] <= w).all(1) & (xy[..., 1] >= 0).all(1) & \
        (xy[..., 1] <= h).all(1)
    idx = np.nonzero(inside)[0]
    _, zbuf = rasterize(xy[idx], z[idx], w, h)
    ok = np.ones(len(idx), bool)
    centre = xy[idx].mean(1)
    zc = z[idx].mean(1)
    for k in range(4):  # the centre, then each corner pulled a third of the way in
        p, d = (centre, zc) if k == 0 else (xy[idx, k - 1] + (centre - xy[idx, k - 1]) / 3,
                                             z[idx, k - 1] + (zc - z[idx, k - 1]) / 3)
        col = np.clip(p[:, 0].astype(np.int64), 0, w - 1)
        row = np.clip(p[:, 1].astype(np.int64), 0, h - 1)
        ok &= d <= zbuf[row, col] * (1 + DEPTH_TOLERANCE)
    out = np.zeros(len(z), bool)
    out[idx[ok]] = True
    return out


def face_quality(view: View, proj: Projection, vertices: np.ndarray, faces: np.ndarray,
                 visible: np.ndarray) -> np.ndarray:
    """[F] how well the photo sees each face: its area in the photo in pixels
    times the cosine of the viewing angle (large and head-on); 0 where not visible."""
    a, b, c = proj.xy[:, 0], proj.xy[:, 1], proj.xy[:, 2]
    area = 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-20)
    to_camera = view.center - tri.mean(1)
    to_camera /= np.maximum(np.linalg.norm(to_camera, axis=1, keepdims=True), 1e-20)
    cos = np.abs(np.einsum("fc,fc->f", normal, to_camera))  # Poisson meshes' winding is not guaranteed
    return np.where(visible & (cos >= MIN_COS), area * cos, 0.0)


def consistent_views(quality: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """quality with the photos whose colour for a face disagrees with the others'
    set to 0 (Waechter et al.'s photo-consistency check): where the mesh is a little
    off (a silhouette that bulges, a thin part), a photo may see the background or
    an occluder there instead of the face. Needs three photos of the face; the
    robust centre is the per-channel median, and a photo is out when it is farther
    from it than OUTLIER_COLOUR and 2.5 times the median distance."""
    seen = np.isfinite(colours[..., 0])
    many = seen.sum(1) >= 3
    if not many.any():
        return quality
    c = colours[many]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(c, axis=1, keepdims=True)
        distance = np.linalg.norm(c - centre, axis=2)  # NaN where unseen
        spread = np.nanmedian(distance, axis=1, keepdims=True)
    out = np.nan_to_num(distance, nan=0.0) > np.maximum(OUTLIER_COLOUR, 2.5 * spread)
    quality = quality.copy()
    rows = np.nonzero(many)[0]
    q = quality[rows]
    q[out] = 0.0
    quality[rows] = q
    return quality


def face_adjacency(faces: np.ndarray):
    """Sparse [F, F] matrix with a 1 for every pair of faces sharing an edge."""
    from scipy.sparse import coo_matrix

    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(faces)), 3)
    key = edges[:, 0].astype(np.int64) * (int(faces.max()) + 1) + edges[:, 1]
    order = np.argsort(key, kind="stable")
    key, owner = key[order], owner[order]
    same = key[1:] == key[:-1]
    a, b = owner[:-1][same], owner[1:][same]
    n = len(faces)
    m = coo_matrix((np.ones(2 * len(a), np.float32), (np.concatenate([a, b]), np.concatenate([b, a]))),
                   shape=(n, n)).tocsr()
    m.data[:] = 1.0
    return m


def select_views(quality: np.ndarray, adjacency, seed: int = 0) -> np.ndarray:
    """[F] the photo each face takes its colour from (-1: none sees it).
    quality: [F, N] from face_quality."""
    num_faces, num_views = quality.shape
    best = quality.max(1, keepdims=True)
    seen = best[:, 0] > 0
    cost = np.where(quality > 0, 1.0 - quality / np.maximum(best, 1e-20), np.inf)
    labels = np.where(seen, quality.argmax(1), -1)
    degree = np.asarray(adjacency.sum(1)).ravel()
    rng = np.random.default_rng(seed)
    for _ in range(ROUNDS):
        onehot = np.zeros((num_faces, num_views), np.float32)
        onehot[seen, labels[seen]] = 1.0
        agree = np.asarray(adjacency @ onehot)
        total = cost + SMOOTHNESS * (degree[:, None] - agree)
        proposal = np.where(seen, total.argmin(1), -1)
        update = rng.random(num_faces) < 0.5
        changed = update & (proposal != labels)
        if not changed.any():
            break
        labels = np.where(update, proposal, labels)
    return merge_small_patches(labels, quality, adjacency)


def merge_small_patches(labels: np.ndarray, quality: np.ndarray, adjacency) -> np.ndarray:
    """Patches of fewer than SMALL_PATCH faces take, whole, the photo most of
    their border's neighbours take, where that photo sees every face of the
    patch: ICM keeps such islands where the data term differs strongly, but
    each is a chart of its own in the atlas (with its padding) and a seam."""
    from scipy.sparse import coo_matrix

    from backend.texture.atlas import patches

    num_faces, num_views = quality.shape
    sees = (quality > 0).astype(np.float32)
    for _ in range(MERGE_ROUNDS):
        patch = patches(labels, adjacency)
        size = np.bincount(patch)
        small_faces = np.nonzero((size[patch] < SMALL_PATCH) & (labels >= 0))[0]
        if not len(small_faces):
            break
        ids, row = np.unique(patch[small_faces], return_inverse=True)
        member = coo_matrix((np.ones(len(small_faces), np.float32), (row, small_faces)),
                            shape=(len(ids), num_faces)).tocsr()
        onehot = np.zeros((num_faces, num_views), np.float32)
        seen = labels >= 0
        onehot[seen, labels[seen]] = 1.0
        border = np.asarray(member @ (adjacency @ onehot))  # [P, N] neighbours' photos (own photo: inside)
        valid = np.asarray(member @ sees) >= size[ids][:, None]  # the photo sees every face of the patch
        own = labels[small_faces[np.unique(row, return_index=True)[1]]]
        border[np.arange(len(ids)), own] = 0
        border[~valid] = 0
        best = border.argmax(1)
        move = border[np.arange(len(ids)), best] > 0
        if not move.any():
            break
        labels = labels.copy()
        moved = move[row]
        labels[small_faces[moved]] = best[row[moved]]
    return labels
