"""3D Gaussian splatting: train splats on the undistorted photos and cameras.

The recipe is gsplat's simple trainer (Kerbl et al. 2023 with gsplat's
defaults), except that splats start at the dense points (see
starting_points), with the mean distance to their three nearest neighbours
as scale; Adam per parameter with gsplat's learning
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

import contextlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from blender_addon.shared.layout import SPLATS_INFO, SPLATS_PLY
from backend.errors import ErrorCode, ReconstructError
from backend.options import SplatOptions

if TYPE_CHECKING:
    import torch

    from backend.job.stage_context import StageContext

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

    from blender_addon.shared.preview_math import SSIM_C1, SSIM_C2, ssim_kernel

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

    from backend.dense.scene import load_rgb, load_scene

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


DENSE_START_SHARE = 0.5
"""The share of max_splats that starts at dense points; the rest is left for densification to add."""


def starting_points(dense_ply: Path | None, sparse_points: np.ndarray, sparse_colors: np.ndarray,
                    opts: SplatOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """Where the splats start: the fused dense points (a random, seeded
    subset: DENSE_START_SHARE of max_splats, or as many as the sparse points
    if those are more, never above max_splats), or the sparse points where the
    dense cloud has fewer. gsplat's recipe starts at the sparse
    points, and at the CPU preset's 300 steps that leaves whatever the few
    sparse points miss unfilled: on the temple ring (1,401 sparse points) a
    photo between two training photos scored 14.4 dB held out; started at
    50,000 of its 211,331 dense points, 22.6 dB in the same time
    (benchmarks/results/splats_temple.md). Returns points, colours (0-255)
    and which cloud they came from."""
    from blender_addon.shared.ply_io import read_ply

    if dense_ply is None or not dense_ply.exists():
        return sparse_points, sparse_colors, "sparse points"
    cloud = read_ply(dense_ply)
    if len(cloud.vertices) <= len(sparse_points):
        return sparse_points, sparse_colors, "sparse points (the dense cloud has fewer)"
    points = cloud.column("x", "y", "z", dtype=np.float64)
    colors = cloud.column("red", "green", "blue", dtype=np.float64) if cloud.has("red", "green", "blue") \
        else np.full((len(points), 3), 128.0)
    keep = min(opts.max_splats, max(int(opts.max_splats * DENSE_START_SHARE), len(sparse_points)))
    if len(points) > keep:
        pick = np.sort(np.random.default_rng(opts.seed).choice(len(points), keep, replace=False))
        points, colors = points[pick], colors[pick]
    return points, colors, f"{len(points):,} of {len(cloud.vertices):,} dense points"


def init_params(points: np.ndarray, colors: np.ndarray, opts: SplatOptions, device, generator,
                scale_factor: float = 1.0, opacity: float = 0.1) -> dict:
    """Splats at `points` (at most opts.max_splats of them): the
    neighbour spacing times `scale_factor` as scale, `opacity`, the point's
    colour; the strategy's densifier says which factor and opacity."""
    import torch
    from scipy.spatial import cKDTree

    from blender_addon.shared.splat_ply import SH_C0

    if len(points) < 4:
        raise ReconstructError(ErrorCode.COULD_NOT_RECONSTRUCT,
                               f"Splats start from the reconstructed points, and there are only {len(points)}.",
                               "Reconstruct with more, overlapping photos first.")
    if len(points) > opts.max_splats:
        keep = np.random.default_rng(opts.seed).choice(len(points), opts.max_splats, replace=False)
        points, colors = points[keep], colors[keep]
    dist, _ = cKDTree(points).query(points, k=4)
    spacing = np.sqrt((dist[:, 1:] ** 2).mean(1)).clip(min=1e-7)
    log_scale = np.log(spacing * scale_factor)
    n = len(points)
    k = (opts.sh_degree + 1) ** 2 - 1
    f = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=device)  # noqa: E731
    params = {
        "means": f(points.copy()),
        "scales": f(np.repeat(log_scale[:, None], 3, 1)),
        "quats": torch.rand((n, 4), generator=generator).to(device),
        "opacities": torch.full((n,), math.log(opacity / (1 - opacity)), device=device),
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


def _adam(name: str, param, lr: float):
    import torch

    return torch.optim.Adam([{"params": param, "lr": lr, "name": name}], eps=1e-15)


def make_optimizers(params: dict, scale: float, rates: dict) -> dict:
    return {name: _adam(name, p, rates[name] * (scale if name == "means" else 1)) for name, p in params.items()}


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
    def reset_every(self) -> int:
        """Opacity resets (3000 of 30k steps), at least one refinement after the first."""
        return max(self.refine_start + self.refine_every, self.steps // 10)

    @property
    def sh_interval(self) -> int:
        return min(1000, max(1, self.steps // 10))

    def sh_degree(self, step: int, max_degree: int) -> int:
        return min(max_degree, step // self.sh_interval)


class Densifier:
    """How splats are added and removed: one adapter over each of gsplat's
    strategies, so the training loop calls the same five methods whichever
    was chosen. This base class is the interface and its do-nothing parts."""

    init_scale = 1.0  # the starting splats' scale, times the spacing of their points
    init_opacity = 0.1

    def __init__(self, strategy, scale: float):
        self.strategy, self.scale = strategy, scale

    def initial_state(self) -> dict:
        """The strategy's running state (tensors and plain data: it goes into checkpoints)."""
        return self.strategy.initialize_state()

    def check(self, params: dict, optimizers: dict) -> None:
        self.strategy.check_sanity(params, optimizers)

    def before_backward(self, params: dict, optimizers: dict, state: dict, step: int, info: dict) -> None:
        pass

    def extra_loss(self, params: dict):
        """What the strategy adds to the photometric loss."""
        return 0.0

    def after_backward(self, params: dict, optimizers: dict, state: dict, step: int, info: dict,
                       means_lr: float) -> None:
        raise NotImplementedError


class DefaultDensifier(Densifier):
    """gsplat's DefaultStrategy (split, clone and prune by screen-space
    gradient, as in the 3DGS paper); it stops growing at `max_splats`.

    The paper's recipe also caps every opacity at 0.01 every `reset_every`
    steps while the splats grow, so that floaters must earn their opacity
    back or be pruned. gsplat 1.5.3 never does: `&` binds tighter than the
    comparisons, so its test `step % self.reset_every == 0 & step > 0` is
    the chain `step % reset_every == (0 & step) > 0`, whose second link
    `0 > 0` is always false (fixed upstream after 1.5.3). Where gsplat's
    test is that one, this adapter does the reset itself, at the steps
    gsplat would have."""

    def __init__(self, strategy, scale: float, max_splats: int):
        super().__init__(strategy, scale)
        self.max_splats = max_splats
        self.resets_opacity = not gsplat_resets_opacity(type(strategy))

    def initial_state(self) -> dict:
        return self.strategy.initialize_state(scene_scale=self.scale)

    def before_backward(self, params, optimizers, state, step, info):
        self.strategy.step_pre_backward(params, optimizers, state, step, info)

    def after_backward(self, params, optimizers, state, step, info, means_lr):
        # Read before gsplat's step: the budget below may end the growth at this step.
        growing = step < self.strategy.refine_stop_iter
        self.strategy.step_post_backward(params, optimizers, state, step, info)
        if self.resets_opacity and growing and step > 0 and step % self.strategy.reset_every == 0:
            from gsplat.strategy.ops import reset_opa

            reset_opa(params=params, optimizers=optimizers, state=state, value=self.strategy.prune_opa * 2.0)
        if len(params["means"]) >= self.max_splats:  # the budget is reached: stop growing
            self.strategy.refine_stop_iter = min(self.strategy.refine_stop_iter, step + 1)


class MCMCDensifier(Densifier):
    """gsplat's MCMCStrategy (a fixed budget, relocated from dead splats to
    busy ones, Kheradmand et al. 2024), with the opacity and scale
    regularisation it expects; off CUDA its two kernels are swapped for torch
    versions while its step runs (_cpu_mcmc_ops)."""

    # gsplat's init_scale 0.1, init_opa 0.5: smaller, more opaque splats.
    init_scale = 0.1
    init_opacity = 0.5

    def __init__(self, strategy, scale: float, on_cuda: bool):
        super().__init__(strategy, scale)
        self.ops = contextlib.nullcontext if on_cuda else _cpu_mcmc_ops

    def extra_loss(self, params):
        import torch

        return MCMC_REG * torch.sigmoid(params["opacities"]).mean() + MCMC_REG * torch.exp(params["scales"]).mean()

    def after_backward(self, params, optimizers, state, step, info, means_lr):
        with self.ops():
            self.strategy.step_post_backward(params, optimizers, state, step, info, lr=means_lr)


def gsplat_resets_opacity(strategy_class) -> bool:
    """Whether gsplat's DefaultStrategy resets opacities itself: false for the
    releases with the always-false test (see DefaultDensifier). Read from
    its source, because the test cannot be reached without a whole training
    step's state."""
    import inspect

    return "== 0 & step > 0" not in inspect.getsource(strategy_class.step_post_backward)


def make_densifier(opts: SplatOptions, schedule: Schedule, scale: float, device) -> Densifier:
    """opts.strategy's densifier, its schedule scaled to the run."""
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if opts.strategy == "mcmc":
        return MCMCDensifier(MCMCStrategy(cap_max=opts.max_splats, refine_start_iter=schedule.refine_start,
                                          refine_stop_iter=schedule.steps * 25 // 30,
                                          refine_every=schedule.refine_every),
                             scale, on_cuda=device.type == "cuda")
    return DefaultDensifier(DefaultStrategy(refine_start_iter=schedule.refine_start,
                                            refine_stop_iter=schedule.steps // 2, refine_every=schedule.refine_every,
                                            reset_every=schedule.reset_every),
                            scale, opts.max_splats)


_OPS_LOCK = threading.RLock()


@contextlib.contextmanager
def _cpu_mcmc_ops():
    """gsplat's MCMC strategy calls two CUDA kernels through
    gsplat.strategy.ops: the relocation formula (eq. 9 of Kheradmand et al.
    2024) and the covariance of each splat (for the position noise). gsplat
    takes no replacement for them, so inside this block that module's two
    names are torch versions of the same maths (_cpu_compute_relocation,
    _cpu_quat_scale_to_covar_preci); gsplat's own are back after it. The lock
    keeps two threads from restoring each other's patch."""
    import gsplat.strategy.ops as ops

    with _OPS_LOCK:
        saved = ops.compute_relocation, ops.quat_scale_to_covar_preci
        ops.compute_relocation, ops.quat_scale_to_covar_preci = _cpu_compute_relocation, _cpu_quat_scale_to_covar_preci
        try:
            yield
        finally:
            ops.compute_relocation, ops.quat_scale_to_covar_preci = saved


def _cpu_quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False):
    from backend.splats.raster import quat_to_rotmat

    m = quat_to_rotmat(quats) * scales[:, None, :]
    return m @ m.transpose(1, 2), None


def _cpu_compute_relocation(opacities, scales, ratios, binoms):
    import torch

    n_max = binoms.shape[0]
    ratios = ratios.clamp(1, n_max).int()
    new_opacities = 1.0 - torch.pow(1.0 - opacities, 1.0 / ratios)
    denom = torch.zeros_like(opacities)
    for i in range(1, int(ratios.max()) + 1):
        for k in range(i):
            term = binoms[i - 1, k] * (-1.0) ** k / math.sqrt(k + 1) * new_opacities ** (k + 1)
            denom = denom + torch.where(ratios >= i, term, torch.zeros_like(term))
    return new_opacities, (opacities / denom)[:, None] * scales


@dataclass
class TrainingState:
    """Everything a run needs to go on from where it stopped: what
    checkpoint.pt holds, one key per field. Only tensors and plain data
    (optimizers' and strategies' state dicts), so it loads with
    torch.load(weights_only=True)."""

    params: dict  # name -> torch.nn.Parameter
    optimizers: dict  # name -> torch.optim.Adam over params[name]
    background: "torch.nn.Parameter"  # [3] RGB
    bg_optimizer: "torch.optim.Adam"
    strategy: dict  # the densifier's state
    step: int = -1  # the last step trained (-1: none yet)
    seconds: float = 0.0  # spent training before this run

    KEYS: ClassVar[frozenset[str]]

    @classmethod
    def start(cls, params: dict, optimizers: dict, strategy: dict, device) -> "TrainingState":
        import torch

        background = torch.nn.Parameter(torch.full((3,), 0.5, device=device))
        return cls(params, optimizers, background, torch.optim.Adam([background], lr=BACKGROUND_LR), strategy)

    def save(self, path: Path) -> None:
        """Written beside `path` and renamed over it: a crash leaves the last checkpoint whole."""
        import torch

        tmp = path.with_name(path.name + ".tmp")
        torch.save({"step": self.step, "params": {k: v.detach() for k, v in self.params.items()},
                    "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                    "background": self.background.detach(), "bg_optimizer": self.bg_optimizer.state_dict(),
                    "strategy": self.strategy, "seconds": self.seconds}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, device) -> "TrainingState":
        """The state saved at `path`; raises if it is not one. The optimizers
        take their learning rates and settings from the saved state dicts."""
        import torch

        saved = torch.load(path, map_location=device, weights_only=True)
        if not (isinstance(saved, dict) and cls.KEYS <= saved.keys()):
            raise ValueError("not a splat training checkpoint")
        params = {k: torch.nn.Parameter(v) for k, v in saved["params"].items()}
        optimizers = {name: _adam(name, p, 0.0) for name, p in params.items()}
        for name, opt in optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        background = torch.nn.Parameter(saved["background"])
        bg_optimizer = torch.optim.Adam([background], lr=BACKGROUND_LR)
        bg_optimizer.load_state_dict(saved["bg_optimizer"])
        return cls(params, optimizers, background, bg_optimizer, saved["strategy"], int(saved["step"]),
                   float(saved["seconds"]))


TrainingState.KEYS = frozenset(f.name for f in fields(TrainingState))


def load_checkpoint(path: Path, device, warn: Callable[[str, str], None]) -> TrainingState | None:
    """The training state saved at `path`, or None to start over. Loaded with
    weights_only=True: tensors and plain data only, never arbitrary objects, so
    a checkpoint planted in a shared workspace runs nothing. One that does not
    load (truncated, foreign, or from another version) is set aside with a
    warning, and training starts from the beginning."""
    if not path.exists():
        return None
    try:
        return TrainingState.load(path, device)
    except Exception as exc:  # torch raises many types for a bad file; every one means "start over"
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        warn("checkpoint_unreadable", f"The splat training checkpoint {path} could not be loaded ({reason}); it "
             f"was set aside as {aside.name} and training starts from the beginning.")
        return None


@dataclass
class _Run:
    """What a training run works from: the options, the photos and their
    split, the scene's scale and the schedules."""

    opts: SplatOptions
    device: "torch.device"
    frames: list[Frame]
    train: list[int]
    test: list[int]
    scale: float
    schedule: Schedule
    rates: dict
    densifier: Densifier


def train_splats(undistorted: Path, out_dir: Path, opts: SplatOptions, progress: Progress,
                 warn: Callable[[str, str], None] = lambda code, message: None,
                 dense_ply: Path | None = None) -> dict:
    """Train (or resume training) into `out_dir`, starting at `dense_ply`'s
    points where it has more than the sparse model (starting_points); writes
    splats.ply and splats.json there and returns the stage's result. `warn(code, message)`
    tells the user about a checkpoint that had to be set aside, and about a
    CUDA GPU the splats cannot use (gsplat without kernels: they train on the
    CPU with our rasteriser instead of failing)."""
    import torch

    from backend.job.device import choose_device, memory_peak

    device = choose_device(opts.device, "splats", warn)
    torch.manual_seed(opts.seed)
    progress(0.0, "loading photos")
    frames, points, colors = load_frames(undistorted, opts.max_image_size, device)
    train, test = split_views([f.name for f in frames], opts.holdout_every)
    scale = scene_scale(frames)
    schedule = Schedule(opts.steps)
    densifier = make_densifier(opts, schedule, scale, device)
    run = _Run(opts, device, frames, train, test, scale, schedule, learning_rates(opts.steps), densifier)
    checkpoint = out_dir / CHECKPOINT
    points, colors, started_from = starting_points(dense_ply, points, colors, opts)
    state = load_checkpoint(checkpoint, device, warn)
    if state is None:
        params = init_params(points, colors, opts, device, torch.Generator().manual_seed(opts.seed),
                             densifier.init_scale, densifier.init_opacity)
        state = TrainingState.start(params, make_optimizers(params, scale, run.rates), densifier.initial_state(),
                                    device)
    start = state.step + 1
    resumed_from = state.step if start else None
    densifier.check(state.params, state.optimizers)

    began = time.perf_counter()
    first_step_seconds = _train(run, state, checkpoint, progress)
    progress(0.98, "scoring held-out photos")
    scores = _score(run, state)
    num_splats = _export(state, out_dir / SPLATS_PLY)
    steps_run = opts.steps - start
    result = {
        "num_splats": num_splats, "started_from": started_from, "steps": opts.steps, "image_size": list(frames[train[0]].size),
        "sh_degree": opts.sh_degree, "strategy": opts.strategy, "held_out": [frames[i].name for i in test],
        "psnr": float(np.mean([s["psnr"] for s in scores.values()])) if scores else None,
        "ssim": float(np.mean([s["ssim"] for s in scores.values()])) if scores else None,
        "per_view": scores, "train_seconds": round(state.seconds, 2),
        "steps_per_second": round(steps_run / max(1e-9, time.perf_counter() - began), 2) if steps_run else None,
        "first_step_seconds": first_step_seconds, "device": str(device),
        "background": state.background.detach().clamp(0, 1).cpu().tolist(), "resumed_from_step": resumed_from,
        **memory_peak(device)}
    (out_dir / SPLATS_INFO).write_text(json.dumps(result, indent=2))
    checkpoint.unlink(missing_ok=True)
    progress(1.0, f"{num_splats} splats" + (f", held-out PSNR {result['psnr']:.2f} dB" if scores else ""))
    return result


def _train(run: _Run, state: TrainingState, checkpoint: Path, progress: Progress) -> float | None:
    """The steps from state.step + 1 to the end, a checkpoint every
    opts.checkpoint_seconds; state.seconds ends as the total training time.
    Returns the first step's seconds (None if none ran)."""
    opts = run.opts
    began = time.perf_counter()
    last_report = last_save = began
    spent, start = state.seconds, state.step + 1
    first_step_seconds = None
    for step in range(start, opts.steps):
        step_began = time.perf_counter()
        loss = _step(run, state, step)
        now = time.perf_counter()
        if first_step_seconds is None:
            first_step_seconds = now - step_began  # on CUDA this includes loading gsplat's kernels
        if now - last_save >= opts.checkpoint_seconds and step + 1 < opts.steps:
            state.seconds = spent + now - began
            state.save(checkpoint)
            last_save = time.perf_counter()
        if now - last_report >= 0.5 or step + 1 == opts.steps:
            rate = (step + 1 - start) / (now - began)
            progress(0.98 * (step + 1) / opts.steps, f"step {step + 1}/{opts.steps}: "
                     f"{len(state.params['means'])} splats, {rate:.1f} steps/s, loss {loss:.4f}, "
                     f"{_time_left((opts.steps - step - 1) / rate)}")
            last_report = now
    state.seconds = spent + time.perf_counter() - began
    return first_step_seconds


def _step(run: _Run, state: TrainingState, step: int) -> float:
    """One training step on one photo; returns its loss."""
    import torch

    from backend.splats.render import render_params

    opts, params, optimizers = run.opts, state.params, state.optimizers
    torch.manual_seed(opts.seed * 1_000_003 + step)  # a resumed run draws what the first would have
    frame = run.frames[_view_for_step(run.train, step, opts.seed)]
    means_lr = run.rates["means"] * run.scale * 0.01 ** (step / opts.steps)
    optimizers["means"].param_groups[0]["lr"] = means_lr
    width, height = frame.size
    rgb, alpha, info = render_params(params, frame.viewmat, frame.K, width, height,
                                     run.schedule.sh_degree(step, opts.sh_degree), run.device)
    image = rgb + (1 - alpha) * state.background
    run.densifier.before_backward(params, optimizers, state.strategy, step, info)
    loss = (1 - SSIM_LAMBDA) * (image - frame.image).abs().mean() + SSIM_LAMBDA * (1 - ssim(image, frame.image))
    loss = loss + run.densifier.extra_loss(params)
    loss.backward()
    for opt in (*optimizers.values(), state.bg_optimizer):
        opt.step()
        opt.zero_grad(set_to_none=True)
    run.densifier.after_backward(params, optimizers, state.strategy, step, info, means_lr)
    state.step = step
    return loss.item()


def _score(run: _Run, state: TrainingState) -> dict:
    """PSNR and SSIM of each held-out photo, the splats over the background."""
    import torch

    from backend.splats.render import render_params

    scores = {}
    with torch.no_grad():
        for i in run.test:
            frame = run.frames[i]
            rgb, alpha, _ = render_params(state.params, frame.viewmat, frame.K, *frame.size, run.opts.sh_degree,
                                          run.device)
            image = (rgb + (1 - alpha) * state.background).clamp(0, 1)
            scores[frame.name] = {"psnr": psnr(image, frame.image), "ssim": float(ssim(image, frame.image))}
    return scores


def _export(state: TrainingState, path: Path) -> int:
    """The splats to the standard PLY at `path`; returns how many."""
    from blender_addon.shared.splat_ply import Splats, write_splats

    p = {k: v.detach().cpu().numpy() for k, v in state.params.items()}
    splats = Splats(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"][:, 0, :], p["shN"])
    write_splats(path, splats)
    return len(splats)


def _time_left(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s left"
    return f"{seconds / 60:.0f} min left" if seconds < 5400 else f"{seconds / 3600:.1f} h left"


def _view_for_step(train: list[int], step: int, seed: int) -> int:
    """The training photo of `step`: a fresh shuffle of the photos every pass."""
    epoch, k = divmod(step, len(train))
    order = np.random.default_rng((seed, epoch)).permutation(len(train))
    return train[order[k]]


def splats_stage(ctx: "StageContext") -> dict:
    """The splats stage: trains into ctx.out, which keeps the checkpoint
    across a cancel, so the next run with the same inputs resumes from it."""
    result = train_splats(ctx.path("undistort"), ctx.out, ctx.options.splats, ctx.progress,
                          lambda code, message: ctx.warn(code, message), dense_ply=ctx.path("fusion"))
    if result.get("resumed_from_step"):
        ctx.log(f"splats: resumed from the checkpoint at step {result['resumed_from_step']}")
    return result
