"""Gaussian splats trained by the backend: on the CPU with our torch
rasteriser (gsplat's on CUDA), scored on held-out photos, exported in the
standard layout, rendered for any camera over the protocol, cancelled and
resumed, and imported into Blender."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from blender_addon.shared import protocol
from blender_addon.shared.camera_math import blender_matrix_to_colmap, colmap_to_blender_matrix
from blender_addon.shared.colmap_io import read_model
from conftest import CACHE, read_json, run_backend
from protocol_helpers import Backend

PHOTOS = CACHE / "synthetic-scene" / "images"


@pytest.fixture(scope="module")
def demo_ws(demo_run):
    """The demo's workspace: the synthetic scene through every stage, splats
    trained with backend.tools.demo.CPU_SPLATS (or the preset on a GPU)."""
    return demo_run[0] / "workspace"


@pytest.fixture(scope="module")
def temple_undistorted(temple, tmp_path_factory):
    """The 16 temple photos through undistortion (cameras only, about 15-40 s):
    a real scene to train on without the whole demo."""
    ws = tmp_path_factory.mktemp("temple-splats") / "ws"
    run_backend("run", temple / "images", "--workspace", ws, "--stages", "undistort", check=True)
    return ws / "undistorted"


def _camera(fx, fy, cx, cy, width, height):
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    return torch.eye(4)[None], K[None]


def test_one_splat_renders_as_the_gaussian_formula_says():
    from backend.splats.raster import rasterize

    viewmat, K = _camera(100.0, 100.0, 32.0, 24.0, 64, 48)
    means = torch.tensor([[0.0, 0.0, 5.0]])
    rgb, alpha, info = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.1), torch.tensor([0.8]),
                                 torch.tensor([[1.0, 0.5, 0.25]]), viewmat, K, 64, 48)
    var = (100 * 0.1 / 5) ** 2 + 0.3  # projected variance + gsplat's 0.3 px^2 blur
    for x, y in ((32, 24), (34, 23), (29, 26)):  # pixel centres at +0.5
        dx, dy = x + 0.5 - 32, y + 0.5 - 24
        expected = 0.8 * math.exp(-0.5 * (dx * dx + dy * dy) / var)
        assert alpha[0, y, x, 0].item() == pytest.approx(expected, rel=1e-5)
        assert rgb[0, y, x].tolist() == pytest.approx([expected, expected / 2, expected / 4], rel=1e-5)
    assert alpha[0, 0, 0, 0].item() == 0.0  # beyond the opacity-aware 3-sigma box
    assert info["radii"][0, 0].tolist() == [7, 7]


def test_a_near_splat_hides_a_far_one_and_transmittance_is_shared():
    from backend.splats.raster import rasterize

    viewmat, K = _camera(100.0, 100.0, 16.0, 16.0, 32, 32)
    means = torch.tensor([[0.0, 0.0, 6.0], [0.0, 0.0, 3.0]])  # the red one is behind
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    rgb, alpha, _ = rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.2),
                              torch.tensor([0.9, 0.6]), colors, viewmat, K, 32, 32)
    a_near = 0.6 * math.exp(-0.5 * 0.5 / ((100 * 0.2 / 3) ** 2 + 0.3))
    a_far = 0.9 * math.exp(-0.5 * 0.5 / ((100 * 0.2 / 6) ** 2 + 0.3))
    assert rgb[0, 16, 16, 1].item() == pytest.approx(a_near, rel=1e-5)
    assert rgb[0, 16, 16, 0].item() == pytest.approx((1 - a_near) * a_far, rel=1e-5)
    assert alpha[0, 16, 16, 0].item() == pytest.approx(1 - (1 - a_near) * (1 - a_far), rel=1e-5)


def _random_splats(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.6 + torch.tensor([0.0, 0.0, 4.0])
    return (means.to(device), torch.randn(n, 4, generator=g).to(device),
            torch.exp(torch.randn(n, 3, generator=g) * 0.4 - 3.5).to(device),
            torch.sigmoid(torch.randn(n, generator=g)).to(device),
            (torch.randn(n, 16, 3, generator=g) * 0.3).to(device))


def _composite_every_pixel(means, quats, scales, opacities, rgb, viewmat, K, width, height):
    """The compositing written the plain way: every splat on every pixel,
    transmittance by a cumulative product, gradients by autograd."""
    from backend.splats import raster as sr

    # The projection written the plain way too: the covariance and the Jacobian as matrices.
    rot = sr.quat_to_rotmat(quats) * scales[:, None, :]
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    x, y, z = (means @ R.T + t).unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * x / z**2, zero, fy / z, -fy * y / z**2], -1).reshape(-1, 2, 3)
    cov2d = J @ R @ rot @ rot.transpose(1, 2) @ R.T @ J.transpose(1, 2) + sr.EPS2D * torch.eye(2)
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    conic = torch.linalg.inv(cov2d)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    d = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)[None] - mean2d[:, None]  # [N, HW, 2]
    sigma = 0.5 * torch.einsum("npi,nij,npj->np", d, conic, d)
    alpha = torch.clamp(opacities[:, None] * torch.exp(-sigma), max=sr.ALPHA_MAX)
    alpha = alpha * (alpha >= sr.ALPHA_MIN)
    alpha = alpha[torch.argsort(z)]
    keep = torch.cumprod(1 - alpha, 0)
    before = torch.cat([torch.ones_like(keep[:1]), keep[:-1]])
    weight = before * alpha * (keep.detach() > sr.T_MIN)
    image = (weight[..., None] * rgb[torch.argsort(z)][:, None]).sum(0)
    return image.reshape(height, width, 3), weight.sum(0).reshape(height, width, 1)


def test_the_rasteriser_gradients_equal_autograd_of_the_plain_formula():
    """Our compositing's hand-written backward (what makes CPU training fast)
    against autograd through the same maths done pixel by pixel."""
    from backend.splats.raster import rasterize

    viewmat, K = _camera(60.0, 64.0, 20.3, 15.7, 40, 30)
    g = torch.Generator().manual_seed(3)
    n = 30
    # Inside the view: gsplat's Jacobian clipping (which the plain formula lacks) stays out of it.
    means = (torch.randn(n, 3, generator=g) * 0.3).clamp(-0.6, 0.6) + torch.tensor([0.0, 0.0, 3.0])
    inputs = [means, torch.randn(n, 4, generator=g),
              torch.exp(torch.randn(n, 3, generator=g) * 0.3 - 2.5), torch.sigmoid(torch.randn(n, generator=g)),
              torch.rand(n, 3, generator=g)]
    weights = torch.randn(30, 40, 4, generator=g)
    grads, images = [], []
    for render in (lambda *a: rasterize(*a, viewmat, K, 40, 30)[:2],
                   lambda *a: _composite_every_pixel(*a, viewmat[0], K[0], 40, 30)):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        rgb, alpha = render(*leaves)
        rgb, alpha = rgb.reshape(30, 40, 3), alpha.reshape(30, 40, 1)
        (torch.cat([rgb, alpha], -1) * weights).sum().backward()
        images.append(torch.cat([rgb, alpha], -1).detach())
        grads.append([x.grad for x in leaves])
    # Overlapping and mostly covered, but no pixel near the 1e-4 transmittance cut, where a
    # rounding difference would decide whether a splat counts.
    coverage = images[1][..., 3]
    assert 0.9 < coverage.max() < 0.999 and (coverage > 0.01).float().mean() > 0.5
    torch.testing.assert_close(images[0], images[1], atol=1e-5, rtol=1e-4)
    for name, ours, plain in zip(("means", "quats", "scales", "opacities", "colours"), *grads):
        torch.testing.assert_close(ours, plain, atol=1e-4 * plain.abs().max().item(), rtol=1e-3, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: gsplat's rasteriser needs one to compare with")
def test_our_cpu_rasteriser_matches_gsplat():
    from gsplat import rasterization

    from backend.splats.raster import rasterize

    viewmat, K = _camera(300.0, 310.0, 160.3, 119.7, 320, 240)
    ours = rasterize(*_random_splats(20000, "cpu"), viewmat, K, 320, 240, sh_degree=3)
    theirs = rasterization(*_random_splats(20000, "cuda"), viewmat.cuda(), K.cuda(), 320, 240, sh_degree=3,
                           packed=False)
    for a, b in zip(ours[:2], theirs[:2]):
        assert (a - b.cpu()).abs().max().item() < 2e-3
    assert torch.equal(ours[2]["radii"], theirs[2]["radii"].cpu())


def test_splats_score_on_held_out_photos(demo_ws):
    """Acceptance 1: the demo's CPU training (backend.tools.demo.CPU_SPLATS: 800
    steps on the 21 training photos at 128 x 96 px, about 2 minutes on 2
    cores) reaches at least 22 dB on the 3 photos it never saw, every 8th by
    name (measured 23.5 dB, SSIM 0.90, started at 13,217 dense points; 23.0 dB
    and 0.88 from the sparse points)."""
    summary = read_json(demo_ws / "summary.json")
    splats = summary["splats"]
    assert splats["held_out"] == ["view_000.png", "view_008.png", "view_016.png"]
    if summary["device"]["splats"] == "cpu":
        assert splats["image_size"] == [128, 96] and splats["steps"] == 800
    assert splats["psnr"] >= 22.0, splats
    assert splats["ssim"] >= 0.8, splats
    info = read_json(demo_ws / "splats" / "splats.json")
    assert info["per_view"].keys() == set(splats["held_out"])
    assert info["psnr"] == pytest.approx(np.mean([v["psnr"] for v in info["per_view"].values()]))


def test_splats_start_at_the_dense_points(demo_ws):
    """The splats stage starts at the fused cloud (a seeded share of
    max_splats of it), not at the few sparse points; the sparse points remain
    for a dense cloud that has fewer, or none."""
    from backend.options import SplatOptions
    from backend.splats.train import DENSE_START_SHARE, starting_points
    from blender_addon.shared.ply_io import read_ply

    dense = demo_ws / "dense" / "fused.ply"
    cloud = read_ply(dense)
    model = read_model(demo_ws / "undistorted" / "sparse")
    sparse, colors = model.xyz, model.rgb.astype(float)
    assert len(cloud.vertices) > 10 * len(sparse)
    opts = SplatOptions(max_splats=2 * len(sparse) * 4)
    points, rgb, where = starting_points(dense, sparse, colors, opts)
    assert len(points) == int(opts.max_splats * DENSE_START_SHARE) and "dense points" in where
    few = SplatOptions(max_splats=len(sparse))  # never fewer than the sparse points, never over the budget
    assert len(starting_points(dense, sparse, colors, few)[0]) == len(sparse)
    on_cloud = {tuple(p) for p in cloud.column("x", "y", "z", dtype=np.float64)}
    assert all(tuple(p) in on_cloud for p in points[:200])
    again, _, _ = starting_points(dense, sparse, colors, opts)
    assert np.array_equal(points, again)  # seeded: a rerun starts from the same splats
    assert rgb.min() >= 0 and rgb.max() <= 255 and rgb.std() > 1
    for missing in (None, demo_ws / "no-such.ply"):
        points, _, where = starting_points(missing, sparse, colors, opts)
        assert np.array_equal(points, sparse) and where == "sparse points"
    summary = read_json(demo_ws / "summary.json")["splats"]
    assert "dense points" in summary["started_from"], summary


def test_the_exported_ply_has_the_standard_layout(demo_ws):
    """Acceptance 2: property names, order and value conventions, read by plyfile."""
    plyfile = pytest.importorskip("plyfile")
    vertex = plyfile.PlyData.read(str(demo_ws / "splats" / "splats.ply"))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
                     *[f"f_rest_{i}" for i in range(45)], "opacity", "scale_0", "scale_1", "scale_2",
                     "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("f4", "float32", "float") for p in vertex.properties)
    assert len(vertex) == read_json(demo_ws / "summary.json")["splats"]["num_splats"]
    opacity = np.asarray(vertex["opacity"])
    assert opacity.min() < 0 < opacity.max()  # logits, not 0..1
    scales = np.exp(np.stack([vertex[f"scale_{i}"] for i in range(3)], 1))  # logs of standard deviations
    assert np.median(scales) < 0.05 * np.ptp(np.stack([vertex["x"], vertex["y"]], 1), 0).max()
    rest = np.stack([vertex[f"f_rest_{i}"] for i in range(45)], 1)
    assert np.abs(rest).max() > 0  # degree 3 was trained
    quats = np.stack([vertex[f"rot_{i}"] for i in range(4)], 1)
    assert np.all(np.linalg.norm(quats, axis=1) > 0)
    # What splat viewers take as the colour, 0.5 + C0 * f_dc, is the scene's colour range.
    colour = 0.5 + 0.28209479 * np.stack([vertex[f"f_dc_{i}"] for i in range(3)], 1)
    assert 0.2 < np.median(colour) < 0.8


def _render_request(backend, ws, image, cam, scale=1.0, rid="r"):
    """Ask for the splats as the previews do for the Blender camera the add-on
    imports for `image` (matrix_world from colmap_to_blender_matrix): the
    add-on converts its matrix_world back to COLMAP's R, t
    (previews.camera_pixels) and sends those with K in pixels."""
    fx, fy, cx, cy = (v * scale for v in cam.params[:4]) if cam.model == "PINHOLE" else \
        (cam.params[0] * scale, cam.params[0] * scale, cam.params[1] * scale, cam.params[2] * scale)
    R, t = blender_matrix_to_colmap(colmap_to_blender_matrix(image.R, image.t))
    backend.send(protocol.RENDER_SPLATS, id=rid, workspace=str(ws),
                 camera={"R": R.tolist(), "t": t.tolist(), "width": round(cam.width * scale),
                         "height": round(cam.height * scale), "fx": fx, "fy": fy, "cx": cx, "cy": cy})
    return backend.until(protocol.RENDER, protocol.ERROR, timeout=120)[0]


def test_the_backend_renders_the_splats_from_a_blender_camera(demo_ws, tmp_path):
    """The render call the previews use: a Blender camera's pose as COLMAP's
    R, t and its pixel intrinsics in, the splats' image out, matching the photo."""
    from PIL import Image

    model = read_model(demo_ws / "undistorted" / "sparse")
    held_out = read_json(demo_ws / "summary.json")["splats"]["held_out"][0]
    image = next(i for i in model.images.values() if i.name == held_out)
    cam = model.cameras[image.camera_id]
    backend = Backend(tmp_path)
    try:
        backend.handshake()
        reply = _render_request(backend, demo_ws, image, cam, scale=0.2, rid=7)
        missing = _render_request(backend, tmp_path, image, cam, scale=0.2, rid=8)
        bad = backend.send(protocol.RENDER_SPLATS, id=9, workspace=str(demo_ws), camera={"width": 3})
        bad = backend.until(protocol.ERROR)[0]
    finally:
        backend.close()
    assert reply["type"] == protocol.RENDER and reply["id"] == 7, reply
    rgba = reply["image"]
    assert rgba.dtype == np.uint8 and rgba.shape == (96, 128, 4)
    alpha = rgba[..., 3] / 255
    assert alpha[:15].mean() < 0.05 and alpha[60:].mean() > 0.95  # the plain sky is left to the background
    background = np.asarray(reply["background"])
    composite = rgba[..., :3] / 255 + (1 - rgba[..., 3:] / 255) * background
    photo = np.asarray(Image.open(demo_ws / "undistorted" / "images" / held_out).convert("RGB")
                       .resize((128, 96), Image.LANCZOS)) / 255
    psnr = -10 * np.log10(np.mean((composite - photo) ** 2))
    assert psnr > 20, psnr  # the render is this camera's view (a wrong pose scores ~10 dB)
    assert missing["type"] == protocol.ERROR and missing["id"] == 8
    assert missing["code"] == protocol.ErrorCode.NO_RESULT and "no splats" in missing["message"]
    assert bad["id"] == 9 and bad["code"] == protocol.ErrorCode.BAD_REQUEST


def test_cancel_during_training_is_quick_and_the_next_run_resumes(demo_ws, tmp_path):
    """Acceptance 5: a cancel lands within 5 s, and the next run picks up from
    the last checkpoint instead of starting over."""
    ws = tmp_path / "ws"
    shutil.copytree(demo_ws, ws, ignore=shutil.ignore_patterns("dense", "mesh", "splats"))
    options = {"splats": {"steps": 200, "max_image_size": 64, "checkpoint_seconds": 1.0, "max_splats": 15000}}
    backend = Backend(tmp_path)
    try:
        backend.handshake()
        backend.send(protocol.RUN, job="s", photos=str(PHOTOS), workspace=str(ws), options=options,
                     stages=["splats"])
        checkpoint = ws / "splats.partial" / "checkpoint.pt"
        while True:
            event = backend.next()
            assert event["type"] in (protocol.PROGRESS, protocol.LOG, protocol.WARNING, protocol.STAGE_DONE), event
            if event["type"] == protocol.PROGRESS and event["stage"] == "splats" and checkpoint.exists() \
                    and event["fraction"] > 0.1:
                break
        backend.cancel_within("s", seconds=5.0)
        saved = torch.load(checkpoint, weights_only=True)["step"]
        assert 0 < saved < 199
        assert read_json(ws / "job.json")["stages"]["splats"]["state"] == "cancelled"
        backend.send(protocol.RUN, job="s2", photos=str(PHOTOS), workspace=str(ws), options=options,
                     stages=["splats"])
        result, events = backend.until(protocol.RESULT, protocol.ERROR)
    finally:
        backend.close()
    assert result["type"] == protocol.RESULT, result
    assert result["ran"] == ["splats"]
    splats = result["summary"]["splats"]
    assert splats["resumed_from_step"] == saved
    assert any(e["type"] == protocol.LOG and f"resumed from the checkpoint at step {saved}" in e["message"]
               for e in events)
    assert (ws / "splats" / "splats.ply").is_file() and not (ws / "splats.partial").exists()
    assert not (ws / "splats" / "checkpoint.pt").exists()


def test_mcmc_keeps_its_budget_on_the_cpu(temple_undistorted, tmp_path, monkeypatch):
    """The MCMC option: gsplat's MCMCStrategy, with the relocation formula in
    torch where gsplat has only a CUDA kernel, patched into gsplat only while
    our steps run. The temple's 1217 sparse points grow by 5% per refinement
    (steps 60 and 70 of 100) to the budget of 1300 and stop there."""
    import gsplat.strategy.ops as ops

    from backend.splats import train as splat_train
    from backend.options import SplatOptions

    gsplat_relocation, gsplat_covar = ops.compute_relocation, ops.quat_scale_to_covar_preci
    calls = []
    ours = splat_train._cpu_compute_relocation
    monkeypatch.setattr(splat_train, "_cpu_compute_relocation", lambda *a, **k: calls.append(1) or ours(*a, **k))
    result = splat_train.train_splats(temple_undistorted, tmp_path, SplatOptions(
        steps=100, max_image_size=48, strategy="mcmc", max_splats=1300, device="cpu"), lambda f, m: None)
    assert result["strategy"] == "mcmc" and result["device"] == "cpu"
    assert result["num_splats"] == 1300  # grew by sampling, capped at the budget
    assert calls  # relocation and sampling went through our torch formula...
    assert ops.compute_relocation is gsplat_relocation  # ...and gsplat has its own back
    assert ops.quat_scale_to_covar_preci is gsplat_covar
    assert result["held_out"] == ["templeSR0001.jpg", "templeSR0009.jpg"]  # every 8th of the 16 registered
    # Measured: 23.2 dB, SSIM 0.81 (seed 1: 22.8 dB, 0.79; seeds 0-2 with a budget of 1500: 22.8-23.2 dB);
    # the splats as initialised score 8 dB. The bounds leave 1 dB and 0.06 below the measurement for the
    # spread between seeds and other machines' rounding.
    assert result["psnr"] >= 22.2, result
    assert result["ssim"] >= 0.75, result


def test_relocation_formula_matches_the_paper():
    """Kheradmand et al. 2024, eq. 9: N copies of a splat with the new opacity
    and scale composite like the original (checked for N = 1 and the opacity
    rule). gsplat.strategy.ops has it only inside _cpu_mcmc_ops."""
    import gsplat.strategy.ops as ops
    from gsplat.strategy import MCMCStrategy

    from backend.splats.train import _cpu_mcmc_ops

    gsplat_relocation = ops.compute_relocation
    binoms = MCMCStrategy().initialize_state()["binoms"]
    opac = torch.tensor([0.3, 0.9, 0.5])
    scales = torch.ones(3, 3)
    with _cpu_mcmc_ops():
        assert ops.compute_relocation is not gsplat_relocation
        new_o, new_s = ops.compute_relocation(opac, scales, torch.tensor([1, 3, 2]), binoms)
    assert ops.compute_relocation is gsplat_relocation
    assert new_o.tolist() == pytest.approx([0.3, 1 - 0.1 ** (1 / 3), 1 - 0.5 ** 0.5], rel=1e-5)
    assert new_s[0].tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-5)  # one copy: unchanged
    assert (new_s[1:] < 1).all()  # copies are smaller than the original


def test_opacities_are_reset_at_the_steps_the_recipe_says(temple_undistorted, tmp_path, monkeypatch):
    """3DGS caps every opacity at 0.01 every tenth of the run (3000 of 30,000
    steps) while the splats grow (the first half). gsplat 1.5.3's
    DefaultStrategy never does (its test is always false); the densifier does
    it instead. A 300-step run resets at steps 60 and 120 (every 60 steps:
    at least the first refinement, at 50, plus one refinement interval),
    and not at 180 or 240, after the growth stopped at 150."""
    import gsplat.strategy.ops as ops
    from gsplat.strategy import DefaultStrategy

    from backend.options import SplatOptions
    from backend.splats import train as splat_train

    resets, original_reset = [], ops.reset_opa

    def spy(params, optimizers, state, value):
        original_reset(params=params, optimizers=optimizers, state=state, value=value)
        resets.append(float(torch.sigmoid(params["opacities"].detach()).max()))

    after_backward, steps = splat_train.DefaultDensifier.after_backward, []
    monkeypatch.setattr(splat_train.DefaultDensifier, "after_backward",
                        lambda self, p, o, s, step, *a: steps.append(step) or after_backward(self, p, o, s, step, *a))
    monkeypatch.setattr(ops, "reset_opa", lambda **k: (resets.append(steps[-1]), spy(**k)))
    result = splat_train.train_splats(temple_undistorted, tmp_path, SplatOptions(
        steps=300, max_image_size=48, strategy="default", max_splats=100_000, device="cpu"), lambda f, m: None)
    assert result["num_splats"] > 0
    assert not splat_train.gsplat_resets_opacity(DefaultStrategy)  # gsplat 1.5.3: its own test never fires
    assert resets[0::2] == [60, 120], resets
    assert max(resets[1::2]) <= 0.01 + 1e-6  # every opacity capped at twice gsplat's pruning threshold
