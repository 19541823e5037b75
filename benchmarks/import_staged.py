"""How long the sidebar's import holds Blender's main thread, against reading on it.

    .venv/bin/python benchmarks/import_staged.py [--repeats 3]

For dense clouds of 1M and 3M points (the backend's fused.ply layout: x y z, nx ny nz float,
red green blue uchar; fountain-P11's dense cloud is about 3M) and a mesh of 1M faces (the
'high' face budget), written as PLY files: 'on the main thread' reads, converts and creates
the datablocks in one call (`read_source` + `build_part`: how the add-on imported before it
read on a thread, with today's datablock creation);
'sidebar' is the add-on's own path: a `stage_done` event handled by the job runner, a reader
thread reading and converting, and the timer called every 5 ms as Blender would, which
creates the datablocks in one call. Its main-thread time is every timer call plus every
wait for the GIL while the reader works (measured as how late each 5 ms sleep returns).
Writes benchmarks/results/import_staged.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import write_report  # noqa: E402


def write_cloud(path: Path, n: int, rng) -> None:
    from blender_addon.shared.ply_io import write_ply

    xyz, normals = rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    write_ply(path, {**{k: xyz[:, i] for i, k in enumerate("xyz")},
                     **{k: normals[:, i] for i, k in enumerate(("nx", "ny", "nz"))},
                     **{k: rgb[:, i] for i, k in enumerate(("red", "green", "blue"))}})


def write_grid_mesh(path: Path, faces: int, rng) -> None:
    from blender_addon.shared.ply_io import write_ply

    side = int(np.sqrt(faces / 2)) + 1
    u, v = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    xyz = np.stack([u.ravel(), v.ravel(), rng.normal(size=side * side).astype(np.float32) * 0.1], 1)
    idx = np.arange(side * side).reshape(side, side)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    tris = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)]).astype(np.int32)
    rgb = rng.integers(0, 256, (len(xyz), 3), dtype=np.uint8)
    write_ply(path, {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "red": rgb[:, 0], "green": rgb[:, 1],
                     "blue": rgb[:, 2]}, tris)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "import_staged.md")
    args = parser.parse_args()

    import bpy
    import addon_utils  # only importable once bpy is

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True)
    from blender_addon.link import jobs
    from blender_addon.importers.results import JobImport, build_part, job_collection, read_source, remove_objects

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        (ws / "dense").mkdir(parents=True)
        (ws / "mesh").mkdir()
        cases = []
        for n in (1_000_000, 3_000_000):
            path = Path(tmp) / f"cloud{n}.ply"
            write_cloud(path, n, rng)
            cases.append((f"dense cloud, {n / 1e6:.0f}M points", "dense", "fusion", "dense_points", path, n))
        mesh_path = Path(tmp) / "mesh.ply"
        write_grid_mesh(mesh_path, 1_000_000, rng)
        cases.append(("mesh, 1M faces", "mesh", "mesh", "mesh", mesh_path, 1_000_000))
        scene = bpy.context.scene
        runner = jobs.runner
        for label, part, stage, key, path, count in cases:
            direct, main_times, build_times, waits, longest, reads = [], [], [], [], [], []
            for _ in range(args.repeats):
                collection = job_collection(scene, ws, "bench")
                start = time.perf_counter()
                for item in read_source(part, path, (part,)):
                    build_part(item, collection, "bench", scene)
                direct.append(time.perf_counter() - start)
                remove_objects(list(collection.all_objects))

                runner.job_id, runner.scene_name = "bench", scene.name
                runner.import_ticks, runner.tick_durations = [], []
                runner.importer = JobImport(scene.name, ws, "bench", ("cameras", "sparse", part))
                start = time.perf_counter()
                runner.handle({"type": "stage_done", "job": "bench", "stage": stage, "workspace": str(ws),
                               "artifacts": {key: str(path)}})
                main = time.perf_counter() - start
                stalls = []
                while not runner.import_ticks:
                    t0 = time.perf_counter()
                    jobs._tick()
                    t1 = time.perf_counter()
                    main += t1 - t0
                    time.sleep(0.005)
                    stalls.append(max(0.0, time.perf_counter() - t1 - 0.005))
                main += sum(stalls)
                main_times.append(main)
                build_times.append(runner.import_ticks[0]["seconds"])
                reads.append(runner.import_ticks[0]["read_seconds"])
                waits.append(sum(stalls))
                longest.append(max(stalls))
                runner.importer.close()
                runner.importer, runner.job_id = None, None
                remove_objects(list(collection.all_objects))
            med = statistics.median
            rows.append(f"| {label} | {med(direct):.3f} | {med(main_times):.3f} | {med(build_times):.3f} | "
                        f"{med(waits):.3f} | {1000 * max(longest):.0f} | {med(reads):.3f} | "
                        f"{1000 * med(main_times) / (count / 1e6):.0f} |")
    lines = [
        "# The sidebar's import: time on Blender's main thread",
        "",
        f"Blender {bpy.app.version_string} (bpy module), numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when it ended (waits include the "
        f"CPU going to other processes); median of {args.repeats} runs (longest wait: the worst of them). "
        "'On the main thread' = read, convert and create in one call (how the add-on imported before "
        "it read on a thread, with today's datablock creation); 'sidebar main thread' = every timer call plus every wait for the GIL, from the "
        "stage_done event to the object; 'of which creating' = the one timer call that creates the "
        "datablocks; 'reader thread' = reading and converting, off the main thread.",
        "",
        "| result | on the main thread s | sidebar main thread s | of which creating s | GIL waits s | "
        "longest wait ms | reader thread s | sidebar ms per million |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
