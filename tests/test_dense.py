"""Cameras become surfaces: depth maps, a fused dense cloud and a trimmed,
colored mesh that lie on the true surface, stay inside the subject, and
survive a cancel without losing finished depth maps."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from backend.tools.evaluate import align_to_ground_truth, dense_scores, sample_surface
from backend.options import JobOptions
from blender_addon.shared import protocol
from blender_addon.shared.ply_io import read_ply, write_ply
from conftest import read_json, run_backend
from protocol_helpers import Backend

# templeSparseRing's README: a tight bounding box of the object, in the ground truth's frame (metres).
TEMPLE_BOX = (np.array([-0.073568, 0.021728, -0.012445]), np.array([0.028855, 0.181892, 0.062736]))


@pytest.fixture(scope="module")
def synthetic(demo_run):
    """The demo's workspace scored against the synthetic scene's true surface
    (backend.tools.evaluate.evaluate_synthetic, which the demo ran and reported)."""
    out, _ = demo_run
    return read_json(out / "report.json")["geometry"]


def test_dense_points_lie_on_the_true_surface_and_cover_it(synthetic):
    """F-score at 1% of the object's diagonal, over the surface two or more cameras see: at
    least 0.95 (issue 17; measured 0.957 with fronto-parallel planes only, 0.960 with the
    slanted families: accuracy 0.9997, completeness 0.923 on 2 CPU cores). At 0.5% it is
    reported (measured 0.939)."""
    dense = synthetic["dense"]
    assert dense["num_points"] > 100_000
    assert dense["f_score"] >= 0.95, dense
    assert dense["accuracy"] >= 0.99 and dense["completeness"] >= 0.9, dense
    assert synthetic["dense_half"]["f_score"] <= dense["f_score"]  # reported beside it, a stricter measure


def test_mesh_lies_on_the_true_surface_with_nothing_floating(synthetic, demo_run):
    """Acceptance 2: mean distance under 1% of the diagonal (measured 0.10%),
    no face far from the true scene, and only large connected pieces."""
    from backend.dense.meshing import MIN_PIECE, _face_pieces

    mesh = synthetic["mesh"]
    assert mesh["mean_distance_fraction"] < 0.01, mesh
    assert mesh["max_distance_fraction"] < 0.05, mesh  # farthest mesh point from the truth (measured 2.5%)
    ply = read_ply(demo_run[0] / "workspace" / "mesh" / "mesh.ply")
    sizes = np.bincount(_face_pieces(ply.faces, len(ply.vertices)))
    assert sizes.min() >= MIN_PIECE * len(ply.faces), "a small piece floats apart from the surface"
    summary = read_json(demo_run[0] / "workspace" / "summary.json")["dense"]
    assert summary["mesh_faces"] == len(ply.faces) <= 300_000  # the balanced preset's face budget


def test_scores_fall_apart_for_points_off_the_surface():
    """The metric itself: a perfect cloud scores 1, one shifted by twice the threshold 0."""
    rng = np.random.default_rng(0)
    square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    truth = sample_surface(square, np.array([[0, 1, 2], [0, 2, 3]]), 0.005)
    points = truth[rng.choice(len(truth), 5000)]
    assert dense_scores(points, truth, 0.02).f_score > 0.99
    assert dense_scores(points + [0, 0, 0.04], truth, 0.02).f_score == 0.0


TEMPLE_POINTS_BEFORE = 211_331  # fused points with fronto-parallel planes only (commit 2a7fb18, 2026-12-04)


def test_temple_dense_cloud_lies_inside_the_ground_truth_box(temple, temple_run):
    """After aligning our cameras to the ground truth's, at least 97% of the
    dense points lie in the object's box, and there are more of them than with
    fronto-parallel planes only (issue 17; measured 98.5% of 217,718, against
    98.9% of 211,331 before)."""
    sim = align_to_ground_truth(temple_run / "sparse" / "model", temple / "gt_colmap")
    points = sim.apply(read_ply(temple_run / "dense" / "fused.ply").column("x", "y", "z", dtype=np.float64))
    lo, hi = TEMPLE_BOX
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    assert len(points) > TEMPLE_POINTS_BEFORE
    assert inside.mean() >= 0.97, f"{100 * inside.mean():.1f}% of {len(points)} points inside"
    mesh = read_ply(temple_run / "mesh" / "mesh.ply")
    assert len(mesh.faces) > 10_000 and mesh.has("red", "green", "blue")


def test_the_mesh_is_also_a_glb_that_lands_beside_the_cameras(temple_run):
    """glTF is +Y up: the GLB holds (x, z, -y), which Blender's glTF importer
    turns back into our (x, y, z)."""
    import trimesh

    ply = read_ply(temple_run / "mesh" / "mesh.ply")
    glb = trimesh.load(temple_run / "mesh" / "mesh.glb", force="mesh", process=False)
    assert len(glb.faces) == len(ply.faces)
    xyz = ply.column("x", "y", "z", dtype=np.float64)
    assert np.allclose(glb.vertices, xyz[:, [0, 2, 1]] * [1, 1, -1], atol=1e-5)
    assert np.array_equal(glb.visual.vertex_colors[:, :3], ply.column("red", "green", "blue", dtype=np.uint8))


def test_depth_maps_are_colmap_files_with_normals(temple_run):
    from backend.dense.scene import read_colmap_array

    stereo = temple_run / "dense" / "stereo"
    depth_maps = sorted((stereo / "depth_maps").glob("*.photometric.bin"))
    assert len(depth_maps) == read_json(temple_run / "summary.json")["registered_images"]
    depth = read_colmap_array(depth_maps[0])
    normals = read_colmap_array(stereo / "normal_maps" / depth_maps[0].name)
    assert depth_maps[0].read_bytes().startswith(f"{depth.shape[1]}&{depth.shape[0]}&1&".encode())
    assert normals.shape == (*depth.shape, 3)
    valid = depth > 0
    assert valid.mean() > 0.1
    assert np.allclose(np.linalg.norm(normals[valid & (np.abs(normals).sum(-1) > 0)], axis=-1), 1, atol=1e-3)


def test_a_box_without_volume_is_refused_with_a_reason(temple, tmp_path):
    with pytest.raises(Exception, match="not a box"):
        JobOptions.from_dict({"dense": {"roi": {"center": [0, 0]}}})
    proc = run_backend("run", temple / "images", "--workspace", tmp_path / "ws", "--roi", "0,0,0,1,0,1")
    assert proc.returncode == 2
    assert "region of interest has no volume" in proc.stderr
    assert "half sizes must be positive" in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_cancel_during_mvs_returns_within_5s_and_keeps_finished_depth_maps(temple, temple_run, tmp_path):
    """Acceptance 5: cancel lands within 5 s; the next run computes only the
    depth maps that were not finished."""
    ws = tmp_path / "ws"
    shutil.copytree(temple_run, ws)
    backend = Backend(tmp_path)
    try:
        backend.handshake()
        backend.send(protocol.RUN, job="d", photos=str(temple / "images"), workspace=str(ws),
                     options={"force": "mvs"}, stages=["mesh"])
        while True:  # wait until a few depth maps are done
            event = backend.next()
            assert event["type"] in (protocol.PROGRESS, protocol.LOG, protocol.WARNING, protocol.STAGE_DONE), event
            if event["type"] == protocol.PROGRESS and event["stage"] == "mvs" and event["fraction"] > 0.3:
                break
        backend.cancel_within("d", seconds=5.0)
        assert read_json(ws / "job.json")["stages"]["mvs"]["state"] == "cancelled"
        partial = ws / "dense" / "stereo.partial" / "depth_maps"
        finished = {p.name: p.stat().st_mtime_ns for p in partial.glob("*.photometric.bin")}
        total = read_json(ws / "summary.json")["registered_images"]
        assert 0 < len(finished) < total

        backend.send(protocol.RUN, job="d2", photos=str(temple / "images"), workspace=str(ws), options={},
                     stages=["mesh"])
        result, _ = backend.until(protocol.RESULT, protocol.ERROR)
    finally:
        backend.close()
    assert result["type"] == protocol.RESULT, result
    assert result["ran"] == ["mvs", "fusion", "mesh"]
    mvs = read_json(ws / "job.json")["stages"]["mvs"]["result"]
    assert sorted(f"{n}.photometric.bin" for n in mvs["reused"]) == sorted(finished)
    assert len(mvs["computed"]) == total - len(finished)
    depth_maps = ws / "dense" / "stereo" / "depth_maps"
    for name, mtime in finished.items():  # untouched, and moved into place with the rest
        assert (depth_maps / name).stat().st_mtime_ns == mtime
    assert not (ws / "dense" / "stereo.partial").exists()


def test_ply_files_are_standard(tmp_path):
    """What we write, plyfile (another implementation) reads, and back."""
    plyfile = pytest.importorskip("plyfile")
    xyz = np.random.default_rng(1).random((50, 3)).astype(np.float32)
    rgb = (xyz * 255).astype(np.uint8)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    path = tmp_path / "m.ply"
    write_ply(path, {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "red": rgb[:, 0], "green": rgb[:, 1],
                     "blue": rgb[:, 2]}, faces)
    theirs = plyfile.PlyData.read(str(path))
    assert [p.name for p in theirs["vertex"].properties] == ["x", "y", "z", "red", "green", "blue"]
    assert np.array_equal(theirs["vertex"]["red"], rgb[:, 0])
    assert np.array_equal(np.stack(theirs["face"]["vertex_indices"]), faces)
    ours = read_ply(path)
    assert np.array_equal(ours.column("x", "y", "z"), xyz) and np.array_equal(ours.faces, faces)
    # quads and ASCII from other tools: fanned into triangles
    vertex = np.array([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], [("x", "f4"), ("y", "f4"), ("z", "f4")])
    face = np.array([([0, 1, 2, 3],)], [("vertex_indices", "i4", (4,))])
    for text in (False, True):
        plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"), plyfile.PlyElement.describe(face, "face")],
                        text=text).write(str(path))
        assert read_ply(path).faces.tolist() == [[0, 1, 2], [0, 2, 3]]


def _ground_views(n: int = 4, width: int = 640, height: int = 480, eye: float = 0.4, pitch_deg: float = 10.0,
                  baseline: float = 0.2):
    """Photos of a textured ground plane (z = 0) from `eye` m up, looking `pitch_deg` down, side
    by side `baseline` m apart: the ground seen at a grazing angle, rendered exactly by ray casting."""
    from PIL import Image

    from backend.dense.scene import View

    rng = np.random.default_rng(0)
    texture = sum(np.asarray(Image.fromarray((rng.random((s, s)) * 255).astype(np.uint8)).resize(
        (1024, 1024), Image.BICUBIC), np.float32) / 255 for s in (16, 64, 256, 1024)) / 4
    f = 0.9 * width
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    pitch = np.radians(pitch_deg)
    # Camera axes in the world: x right, y down (image), z forward; the ground is z = 0, up is +z.
    R = np.array([[1, 0, 0], [0, -np.sin(pitch), -np.cos(pitch)], [0, np.cos(pitch), -np.sin(pitch)]])
    views, images = [], []
    v, u = np.mgrid[0:height, 0:width] + 0.5
    for k in range(n):
        c = np.array([baseline * k, 0.0, eye])
        t = -R @ c
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ R  # world directions
        s = -c[2] / np.minimum(rays[..., 2], -1e-9)
        hit = c + rays * s[..., None]
        # The texture covers 4 x 4 m ahead; beyond it, and above the horizon, flat grey.
        tu = (hit[..., 0] + 2) / 4 * 1023
        tv = hit[..., 1] / 4 * 1023
        inside = (rays[..., 2] < -1e-3) & (tu >= 0) & (tu <= 1023) & (tv >= 0) & (tv <= 1023)
        img = texture[np.clip(tv, 0, 1023).astype(int), np.clip(tu, 0, 1023).astype(int)]
        images.append(np.where(inside, img, 0.5).astype(np.float32))
        views.append(View(f"ground_{k}", K, R, t, width, height, 1.0))
    down = -(np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ R)[..., 2]
    truth = np.where(images[1] != 0.5, eye / np.maximum(down, 1e-9), 0)  # depth along the optical axis
    return views, images, truth


def test_slanted_planes_recover_the_ground_at_a_grazing_angle():
    """Issue 17: fronto-parallel windows decorrelate on the ground seen at a grazing angle; the
    ground's own plane family matches it (depths within 1%) over far more of the photo
    (measured: 84% of the ground in the depth range, against 58% with fronto-parallel planes)."""
    from backend.dense import mvs
    from backend.options import DenseOptions

    views, images, truth = _ground_views()
    ref, srcs = views[1], [views[0], views[2], views[3]]
    # "Sparse points": where the reference's pixels meet the ground, every 8th pixel.
    ys, xs = np.nonzero(truth[::8, ::8] > 0)
    z = truth[::8, ::8][ys, xs]
    pix = np.stack([xs * 8 + 0.5, ys * 8 + 0.5, np.ones_like(xs, float)], 1)
    points_cam = pix @ np.linalg.inv(ref.K).T * z[:, None]
    near, far = np.percentile(z, 1) * 0.8, np.percentile(z, 99) * 1.25
    opts = DenseOptions(window_radius=3)
    scores = {}
    for name, families in (("fronto", None), ("slanted", mvs.sweeps(ref, points_cam))):
        depth = mvs.estimate_depth(images[1], [images[0], images[2], images[3]], ref, srcs, near, far, opts, "cpu",
                                   families)
        seen = (truth > near) & (truth < far)
        good = (depth > 0) & (np.abs(depth - truth) < 0.01 * truth)
        scores[name] = good[seen].mean()
    assert "ground" in [f.name for f in mvs.sweeps(ref, points_cam)]
    assert scores["slanted"] >= 0.8, scores
    assert scores["slanted"] > scores["fronto"] + 0.1, scores
