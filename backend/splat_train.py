"""3D Gaussian splatting: train splats on the undistorted photos and cameras.

The recipe is gsplat's simple trainer (Kerbl et al. 2023 with gsplat's
defaults): splats start at the sparse points, with the mean distance to their
three nearest neighbours as scale; Adam per parameter with gsplat's learning
rates (the means' decaying to 1% over the run; raised for runs under 3000
steps, see learning_rates); loss 0.8 L1 + 0.2 (1 - SSIM);
spherical-harmonic degrees switched on one by one; densification by gsplat's
DefaultStrategy or MCMCStrategy with their schedules scaled to the number of
steps. One photo per step, in a shuffled order fixed by the seed.

Beyond gsplat's recipe: a learned background colour (one RGB for everything
no splat covers, such as a plain sky or studio backdrop; it is written to
splats.json, not baked into the splats) and checkpoints: every
`checkpoint_seconds` the whole training state goes to checkpoint.pt in the
stage's partial folder, and a run with the same inputs resumes from it.

Every `holdout_every`-th photo (by name) is kept out of training and scores
the result: PSNR and SSIM over the whole image, splats over the background.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from backend.errors import ErrorCode, ReconstructError
from backend.options import SplatOptions

if TYPE_CHECKING:
    import torch

    from backend.stage_context import StageContext

Progress = Callable[[float, str], None]

CHECKPOINT = "checkpoint.pt"
SSIM_LAMBDA = 0.2
# gsplat simple_trainer's learning rates (means: times the scene scale).
LEARNING_RATES = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3,
                  "shN": 2.5e-3 / 20}
# How much of the short-run boost (see learning_rates) each group takes.
BOOST_POWER = {"means": 1.0, "scales": 0.5, "opacities": 0.4, "sh0": 0.4}
BACKGROUND_LR = 1e-2
MCMC_REG = 0.01  # opacity and scale regularisation that the MCMC strategy expects


@dataclass
class Frame:
    name: str
    image: "torch.Tensor"  # [H, W, 3] in 0..1
    K: "torch.Tensor"  # [3, 3]
    viewmat: "torch.Tensor"  # [4, 4] world -> camera

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def split_views(names: list[str], holdout_every: int) -> tuple[list[int], list[int]]:
    """(train, held out) indices of the photos sorted by name: every n-th held out."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    if holdout_every < 2 or len(names) < 3:
        return order, []
    test = [i for k, i in enumerate(order) if k % holdout_every == 0]
    return [i for i in order if i not in test], test


def ssim(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """Mean SSIM of two [H, W, 3] images in 0..1, differentiable: the
    definition of blender_addon/preview_math (its window and constants),
    over the windows inside the image, as preview_math.ssim."""
    import torch
    import torch.nn.functional as F

    from blender_addon.preview_math import SSIM_C1, SSIM_C2, ssim_kernel

    g = torch.as_tensor(ssim_kernel(), dtype=a.dtype, device=a.device)
    size = len(g)
    window = (g[:, None] * g[None, :]).expand(3, 1, size, size)
    a, b = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    blur = lambda v: F.conv2d(v, window, groups=3)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return s.mean()


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def load_frames(undistorted: Path, max_image_size: int, device):
    import torch

    from backend.mvs import load_rgb, load_scene

    scene = load_scene(undistorted, max_image_size)
    frames = []
    for view in scene.views:
        viewmat = np.eye(4)
        viewmat[:3, :3], viewmat[:3, 3] = view.R, view.t
        frames.append(Frame(view.name,
                            torch.as_tensor(np.array(load_rgb(scene, view)), device=device).float() / 255,
                            torch.as_tensor(view.K, dtype=torch.float32, device=device),
                            torch.as_tensor(viewmat, dtype=torch.float32, device=device)))
    return frames, scene.points, scene.colors


def scene_scale(frames: list[Frame]) -> float:
    """How far the cameras spread from their centre (x 1.1), as gsplat measures scene size."""
    centres = np.stack([(-f.viewmat[:3, :3].T @ f.viewmat[:3, 3]).cpu().numpy() for f in frames])
    return float(np.linalg.norm(centres - centres.mean(0), axis=1).max() * 1.1) or 1.0


def init_params(points: np.ndarray, colors: np.ndarray, opts: SplatOptions, device, generator) -> dict:
    import torch
    from scipy.spatial import cKDTree

    from blender_addon.splat_ply import SH_C0

    if len(points) < 4:
        raise ReconstructError(ErrorCode.COULD_NOT_RECONSTRUCT,
                               f"Splats start from the sparse points, and there are only {len(points)}.",
                               "Reconstruct with more, overlapping photos first.")
    if len(points) > opts.max_splats:
        keep = np.random.default_rng(opts.seed).choice(len(points), opts.max_splats, replace=False)
        points, colors = points[keep], colors[keep]
    dist, _ = cKDTree(points).query(points, k=4)
    spacing = np.sqrt((dist[:, 1:] ** 2).mean(1)).clip(min=1e-7)
    mcmc = opts.strategy == "mcmc"
    # MCMC starts with smaller, more opaque splats (gsplat's init_scale 0.1, init_opa 0.5).
    log_scale = np.log(spacing * (0.1 if mcmc else 1.0))
    n = len(points)
    k = (opts.sh_degree + 1) ** 2 - 1
    f = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=device)  # noqa: E731
    params = {
        "means": f(points.copy()),
        "scales": f(np.repeat(log_scale[:, None], 3, 1)),
        "quats": torch.rand((n, 4), generator=generator).to(device),
        "opacities": torch.full((n,), math.log(0.5 / 0.5) if mcmc else math.log(0.1 / 0.9), device=device),
        "sh0": f((colors / 255.0 - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros((n, k, 3), device=device),
    }
    return {name: torch.nn.Parameter(v) for name, v in params.items()}


def learning_rates(steps: int) -> dict:
    """gsplat's learning rates, raised for runs under 3000 steps.

    gsplat's are tuned for 7k-30k steps; a CPU run of a few hundred steps at
    them stops far from converged. Below 3000 steps they are multiplied by
    boost ** BOOST_POWER[group], boost = (3000 / steps) ** 2 (at most 16).
    On the synthetic scene, 600 steps at 128x96 px, held-out PSNR went from
    20.9 dB at gsplat's rates to 22.5 dB with the means' x16, scales' x4 and
    opacities' and colours' x3 (x2 on all six groups: 21.9 dB)."""
    boost = min(16.0, (3000 / steps) ** 2) if steps < 3000 else 1.0
    return {name: lr * boost ** BOOST_POWER.get(name, 0.0) for name, lr in LEARNING_RATES.items()}


def make_optimizers(params: dict, scale: float, rates: dict) -> dict:
    import torch

    return {name: torch.optim.Adam([{"params": p, "lr": rates[name] * (scale if name == "means" else 1),
                                     "name": name}], eps=1e-15)
            for name, p in params.items()}


@dataclass
class Schedule:
    """gsplat's schedules (tuned for 30k steps) scaled to a run of `steps`."""

    steps: int

    @property
    def refine_every(self) -> int:
        return min(100, max(10, self.steps // 70))

    @property
    def refine_start(self) -> int:
        return min(500, 5 * self.refine_every)

    @property
    def sh_interval(self) -> int:
        return min(1000, max(1, self.steps // 10))

    def sh_degree(self, step: int, max_degree: int) -> int:
        return min(max_degree, step // self.sh_interval)


def make_strategy(opts: SplatOptions, schedule: Schedule, device):
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if opts.strategy == "mcmc":
        if device.type != "cuda":
            _cpu_mcmc_ops()
        return MCMCStrategy(cap_max=opts.max_splats, refine_start_iter=schedule.refine_start,
                            refine_stop_iter=schedule.steps * 25 // 30, refine_every=schedule.refine_every)
    return DefaultStrategy(refine_start_iter=schedule.refine_start, refine_stop_iter=schedule.steps // 2,
                           refine_every=schedule.refine_every,
                           reset_every=max(schedule.refine_start + schedule.refine_every, schedule.steps // 10))


def _cpu_mcmc_ops() -> None:
    """gsplat's MCMC strategy calls two CUDA kernels: the relocation formula
    (eq. 9 of Kheradmand et al. 2024) and the covariance of each splat (for
    the position noise). On the CPU it gets torch versions of the same maths."""
    import gsplat.strategy.ops as ops
    import torch

    from backend.splat_raster import quat_to_rotmat

    def quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False):
        m = quat_to_rotmat(quats) * scales[:, None, :]
        return m @ m.transpose(1, 2), None

    def compute_relocation(opacities, scales, ratios, binoms):
        n_max = binoms.shape[0]
        ratios = ratios.clamp(1, n_max).int()
        new_opacities = 1.0 - torch.pow(1.0 - opacities, 1.0 / ratios)
        denom = torch.zeros_like(opacities)
        for i in range(1, int(ratios.max()) + 1):
            for k in range(i):
                term = binoms[i - 1, k] * (-1.0) ** k / math.sqrt(k + 1) * new_opacities ** (k + 1)
                denom = denom + torch.where(ratios >= i, term, torch.zeros_like(term))
        return new_opacities, (opacities / denom)[:, None] * scales

    ops.compute_relocation = compute_relocation
    ops.quat_scale_to_covar_preci = quat_scale_to_covar_preci


def train_splats(undistorted: Path, out_dir: Path, opts: SplatOptions, progress: Progress,
                 warn: Callable[[str, str], None] = lambda code, message: None) -> dict:
    """Train (or resume training) into `out_dir`; writes splats.ply and
    splats.json there and returns the stage's result. `warn(code, message)`
    tells the user about a checkpoint that had to be set aside."""
    import torch

    from backend.mvs import choose_device, memory_peak
    from backend.splat_render import render_params
    from blender_addon.splat_ply import Splats, write_splats

    device = choose_device(opts.device, "splats")
    torch.manual_seed(opts.seed)
    progress(0.0, "loading photos")
    frames, points, colors = load_frames(undistorted, opts.max_image_size, device)
    train, test = split_views([f.name for f in frames], opts.holdout_every)
    scale = scene_scale(frames)
    schedule = Schedule(opts.steps)
    rates = learning_rates(opts.steps)
    strategy = make_strategy(opts, schedule, device)
    checkpoint = out_dir / CHECKPOINT
    state = load_checkpoint(checkpoint, device, warn)
    if state is not None:
        params = {k: torch.nn.Parameter(v) for k, v in state["params"].items()}
        optimizers = make_optimizers(params, scale, rates)
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        background = torch.nn.Parameter(state["background"])
        bg_optimizer = torch.optim.Adam([background], lr=BACKGROUND_LR)
        bg_optimizer.load_state_dict(state["bg_optimizer"])
        strategy_state, start, spent = state["strategy"], state["step"] + 1, state["seconds"]
    else:
        params = init_params(points, colors, opts, device, torch.Generator().manual_seed(opts.seed))
        optimizers = make_optimizers(params, scale, rates)
        background = torch.nn.Parameter(torch.full((3,), 0.5, device=device))
        bg_optimizer = torch.optim.Adam([background], lr=BACKGROUND_LR)
        strategy_state = (strategy.initialize_state(scene_scale=scale) if opts.strategy == "default"
                          else strategy.initialize_state())
        start, spent = 0, 0.0
    resumed_from = start - 1 if start else None
    strategy.check_sanity(params, optimizers)

    began = time.perf_counter()
    last_report = last_save = began
    first_step_seconds = None
    loss_value = float("nan")
    for step in range(start, opts.steps):
        step_began = time.perf_counter()
        torch.manual_seed(opts.seed * 1_000_003 + step)  # a resumed run draws what the first would have
        frame = frames[_view_for_step(train, step, opts.seed)]
        means_lr = rates["means"] * scale * 0.01 ** (step / opts.steps)
        optimizers["means"].param_groups[0]["lr"] = means_lr
        width, height = frame.size
        rgb, alpha, info = render_params(params, frame.viewmat, frame.K, width, height,
                                         schedule.sh_degree(step, opts.sh_degree), device)
        image = rgb + (1 - alpha) * background
        if opts.strategy == "default":
            strategy.step_pre_backward(params, optimizers, strategy_state, step, info)
        loss = (1 - SSIM_LAMBDA) * (image - frame.image).abs().mean() + \
            SSIM_LAMBDA * (1 - ssim(image, frame.image))
        if opts.strategy == "mcmc":
            loss = loss + MCMC_REG * torch.sigmoid(params["opacities"]).mean() + \
                MCMC_REG * torch.exp(params["scales"]).mean()
        loss.backward()
        for opt in (*optimizers.values(), bg_optimizer):
            opt.step()
            opt.zero_grad(set_to_none=True)
        if opts.strategy == "default":
            strategy.step_post_backward(params, optimizers, strategy_state, step, info)
            if len(params["means"]) >= opts.max_splats:  # the budget is reached: stop growing
                strategy.refine_stop_iter = min(strategy.refine_stop_iter, step + 1)
        else:
            strategy.step_post_backward(params, optimizers, strategy_state, step, info, lr=means_lr)
        loss_value = loss.item()
        now = time.perf_counter()
        if first_step_seconds is None:
            first_step_seconds = now - step_began  # on CUDA this includes compiling gsplat's kernels
        if now - last_save >= opts.checkpoint_seconds and step + 1 < opts.steps:
            _save_checkpoint(checkpoint, step, params, optimizers, background, bg_optimizer, strategy_state,
                             spent + now - began)
            last_save = time.perf_counter()
        if now - last_report >= 0.5 or step + 1 == opts.steps:
            rate = (step + 1 - start) / (now - began)
            progress(0.98 * (step + 1) / opts.steps, f"step {step + 1}/{opts.steps}: {len(params['means'])} splats, "
                     f"{rate:.1f} steps/s, loss {loss_value:.4f}, {_time_left((opts.steps - step - 1) / rate)}")
            last_report = now
    seconds = spent + time.perf_counter() - began

    progress(0.98, "scoring held-out photos")
    scores = {}
    with torch.no_grad():
        for i in test:
            frame = frames[i]
            rgb, alpha, _ = render_params(params, frame.viewmat, frame.K, *frame.size, opts.sh_degree, device)
            image = (rgb + (1 - alpha) * background).clamp(0, 1)
            scores[frame.name] = {"psnr": psnr(image, frame.image), "ssim": float(ssim(image, frame.image))}
    p = {k: v.detach().cpu().numpy() for k, v in params.items()}
    splats = Splats(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"][:, 0, :], p["shN"])
    write_splats(out_dir / "splats.ply", splats)
    steps_run = opts.steps - start
    result = {
        "num_splats": len(splats), "steps": opts.steps, "image_size": list(frames[train[0]].size),
        "sh_degree": opts.sh_degree, "strategy": opts.strategy, "held_out": [frames[i].name for i in test],
        "psnr": float(np.mean([s["psnr"] for s in scores.values()])) if scores else None,
        "ssim": float(np.mean([s["ssim"] for s in scores.values()])) if scores else None,
        "per_view": scores, "train_seconds": round(seconds, 2),
        "steps_per_second": round(steps_run / max(1e-9, time.perf_counter() - began), 2) if steps_run else None,
        "first_step_seconds": first_step_seconds, "device": str(device),
        "background": background.detach().clamp(0, 1).cpu().tolist(), "resumed_from_step": resumed_from,
        **memory_peak(device)}
    (out_dir / "splats.json").write_text(json.dumps(result, indent=2))
    checkpoint.unlink(missing_ok=True)
    progress(1.0, f"{len(splats)} splats" + (f", held-out PSNR {result['psnr']:.2f} dB" if scores else ""))
    return result


def _time_left(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s left"
    return f"{seconds / 60:.0f} min left" if seconds < 5400 else f"{seconds / 3600:.1f} h left"


def _view_for_step(train: list[int], step: int, seed: int) -> int:
    """The training photo of `step`: a fresh shuffle of the photos every pass."""
    epoch, k = divmod(step, len(train))
    order = np.random.default_rng((seed, epoch)).permutation(len(train))
    return train[order[k]]


def load_checkpoint(path: Path, device, warn: Callable[[str, str], None]) -> dict | None:
    """The training state saved at `path`, or None to start over. Loaded with
    weights_only=True: tensors and plain data only, never pickled objects, so
    a checkpoint planted in a shared workspace runs nothing. One that does not
    load (truncated, foreign, or from another version) is set aside with a
    warning, and training starts from the beginning."""
    import torch

    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not (isinstance(state, dict) and _CHECKPOINT_KEYS <= state.keys()):
            raise ValueError("not a splat training checkpoint")
        return state
    except Exception as exc:  # torch raises many types for a bad file; every one means "start over"
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        warn("checkpoint_unreadable", f"The splat training checkpoint {path} could not be loaded ({reason}); it "
             f"was set aside as {aside.name} and training starts from the beginning.")
        return None


_CHECKPOINT_KEYS = {"step", "params", "optimizers", "background", "bg_optimizer", "strategy", "seconds"}


def _save_checkpoint(path: Path, step, params, optimizers, background, bg_optimizer, strategy_state, seconds):
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "params": {k: v.detach() for k, v in params.items()},
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "background": background.detach(), "bg_optimizer": bg_optimizer.state_dict(),
                "strategy": strategy_state, "seconds": seconds}, tmp)
    os.replace(tmp, path)


def splats_stage(ctx: "StageContext") -> dict:
    """The splats stage: trains into ctx.out, which keeps the checkpoint
    across a cancel, so the next run with the same inputs resumes from it."""
    result = train_splats(ctx.path("undistort"), ctx.out, ctx.options.splats, ctx.progress,
                          lambda code, message: ctx.warn(code, message))
    if result.get("resumed_from_step"):
        ctx.log(f"splats: resumed from the checkpoint at step {result['resumed_from_step']}")
    return result
