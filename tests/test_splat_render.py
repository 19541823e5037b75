"""F12 with splats: an artist imports a job and renders the scene with EEVEE
or Cycles; the splats are in the picture as the backend's exact render draws
them, and a mesh in front of them hides them while a mesh behind them shows
only where they do not cover it. These tests render with Blender's own
engines (bpy.ops.render.render, the F12 operator) and read the saved frame."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BACKEND_PYTHON

pytestmark = pytest.mark.slow
bpy = pytest.importorskip("bpy")


@pytest.fixture
def blender(tmp_path):
    from addon_helpers import disable_addon, fresh_blender_with_addon

    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    yield jobs
    jobs.runner.stop_backend()
    disable_addon()


def _eevee() -> str:
    return "BLENDER_EEVEE_NEXT" if bpy.app.version < (4, 5, 0) else "BLENDER_EEVEE"


def f12(tmp_path, engine: str) -> np.ndarray:
    """Render the scene's frame with `engine` (few samples: the splats do not
    need them, the meshes here are flat emission) and read it back, [H, W, 3]
    in the saved PNG's (display) values 0..1, top row first."""
    from blender_addon.ui.previews import load_png

    scene = bpy.context.scene
    scene.render.engine = engine
    if engine == "CYCLES":  # (the denoiser, at 4 samples, smears the frame's border)
        scene.cycles.samples, scene.cycles.device, scene.cycles.use_denoising = 4, "CPU", False
    else:
        scene.eevee.taa_render_samples = 4
    scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"
    scene.render.image_settings.file_format, scene.render.image_settings.color_mode = "PNG", "RGB"
    path = tmp_path / f"f12-{engine}.png"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return load_png(path)[..., :3]


def _black_world(scene):
    world = scene.world or bpy.data.worlds.new("black")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0, 0, 0, 1)


def _emission_plane(name, colour, size, location):
    """A flat, unlit square facing +Z (the camera) of `colour` (scene linear)."""
    bpy.ops.mesh.primitive_plane_add(size=size, location=location)
    plane = bpy.context.object
    plane.name = name
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.remove(nodes["Principled BSDF"])
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    mat.node_tree.links.new(emission.outputs["Emission"], nodes["Material Output"].inputs["Surface"])
    plane.data.materials.append(mat)
    return plane


def _psnr(a, b, where):
    return 10 * np.log10(1.0 / max(float(((a - b) ** 2)[where].mean()), 1e-12))


@pytest.mark.every_blender
def test_f12_renders_the_splats_in_depth_order_with_the_scene(blender, tmp_path):
    """Acceptance 2, on a ball of degree-3 splats seen by a camera 4 units away:
    the F12 frame matches the backend's exact render; a plane in front of the
    left half hides the splats there and leaves the right half as it was; a
    plane behind the ball shows through only where the splats leave it (their
    alpha). Cycles here; EEVEE in the demo test below (its first frame compiles
    shaders for a minute)."""
    from backend.splats.render import render_camera
    from blender_addon.importers.splats import import_splats
    from blender_addon.render.compositing import ensure_compositing
    from blender_addon.shared.splat_ply import read_splats, write_splats
    from test_splats import blob

    scene = bpy.context.scene
    write_splats(tmp_path / "ball.ply", blob(3000, degree=3))
    import_splats("ball", read_splats(tmp_path / "ball.ply"), scene.collection)
    ensure_compositing(scene)
    _black_world(scene)
    w, h, f = 160, 120, 200.0
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.location = (0.0, 0.0, 4.0)  # looking down -Z at the ball
    camera.data.sensor_fit, camera.data.sensor_width = "HORIZONTAL", 36.0
    camera.data.lens = f * 36.0 / w
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100

    exact = render_camera(tmp_path / "ball.ply", np.diag([1.0, -1.0, -1.0]), [0.0, 0.0, 4.0], f, f, w / 2, h / 2,
                          w, h, "cpu")
    covered = exact[..., 3] > 0.01
    alone = f12(tmp_path, "CYCLES")
    psnr = _psnr(alone, exact[..., :3], covered)
    print(f"ball: Cycles F12 vs exact {psnr:.1f} dB")
    assert psnr >= 28.0

    # A blue plane 1 unit in front of the camera, over the left half of the view.
    _emission_plane("front", (0.0, 0.0, 1.0), 2.0, (-1.0, 0.0, 3.0))
    front = f12(tmp_path, "CYCLES")
    left, right = slice(0, w // 2 - 2), slice(w // 2 + 2, w)
    assert np.allclose(front[:, left], (0.0, 0.0, 1.0), atol=2 / 255)  # the plane, no splat over it
    assert covered[:, right].mean() > 0.1
    assert _psnr(front[:, right], exact[:, right, :3], covered[:, right]) >= 28.0  # the splats as before
    bpy.data.objects.remove(bpy.data.objects["front"])

    # A green plane far behind the ball: the splats cover it by their alpha.
    _emission_plane("back", (0.0, 1.0, 0.0), 40.0, (0.0, 0.0, -5.0))
    back = f12(tmp_path, "CYCLES")
    opaque, empty = exact[..., 3] > 0.99, exact[..., 3] < 0.002
    assert opaque.mean() > 0.02 and empty.mean() > 0.2
    assert _psnr(back, exact[..., :3], opaque) >= 28.0  # the splats, the plane hidden behind them
    assert np.allclose(back[empty], (0.0, 1.0, 0.0), atol=2 / 255)  # the plane where no splat is

    # An animation: the camera slides sideways; each frame's splats are drawn for that frame's camera.
    bpy.data.objects.remove(bpy.data.objects["back"])
    camera.location = (0.0, 0.0, 4.0)
    camera.keyframe_insert("location", frame=1)
    camera.location = (0.4, 0.0, 4.0)
    camera.keyframe_insert("location", frame=2)
    scene.frame_start, scene.frame_end = 1, 2
    scene.render.filepath = str(tmp_path / "frame-")
    bpy.ops.render.render(animation=True)
    from blender_addon.ui.previews import load_png

    for frame, x in ((1, 0.0), (2, 0.4)):
        rendered = load_png(tmp_path / f"frame-{frame:04d}.png")[..., :3]
        seen = render_camera(tmp_path / "ball.ply", np.diag([1.0, -1.0, -1.0]), [-x, 0.0, 4.0], f, f, w / 2, h / 2,
                             w, h, "cpu")
        assert _psnr(rendered, seen[..., :3], seen[..., 3] > 0.01) >= 28.0, frame
    camera.animation_data_clear()
    _emission_plane("back", (0.0, 1.0, 0.0), 40.0, (0.0, 0.0, -5.0))

    # Hidden from renders: the splats are left out.
    splats = next(o for o in scene.objects if o.get("reconstruct_splats"))
    splats.hide_render = True
    hidden = f12(tmp_path, "CYCLES")
    assert np.allclose(hidden[opaque], (0.0, 1.0, 0.0), atol=2 / 255)


@pytest.mark.parametrize("engine", ["EEVEE", "CYCLES"])
def test_f12_of_the_demo_job_from_a_photo_camera_matches_the_exact_render(engine, blender, demo_run, tmp_path):
    """Acceptance 2 and 4 (F12): the demo job's splats rendered with F12 from
    one of its photos' cameras score at least 28 dB against the backend's exact
    render of the same file from the same camera."""
    from backend.splats.render import render_camera
    from blender_addon.importers.cameras import make_active_camera
    from blender_addon.importers.results import import_workspace
    from blender_addon.ui.previews import camera_pixels, job_cameras

    ws = demo_run[0] / "workspace"
    scene = bpy.context.scene
    collection = import_workspace(ws, "job", scene, parts=("cameras", "splats"))
    cams = job_cameras(collection)
    cam = cams[len(cams) // 2]
    make_active_camera(scene, cam)
    scene.render.resolution_percentage = 100
    _black_world(scene)
    pix = camera_pixels(scene, cam)
    exact = render_camera(ws / "splats" / "splats.ply", pix["R"], pix["t"], pix["fx"], pix["fy"], pix["cx"],
                          pix["cy"], pix["width"], pix["height"], "cpu")
    ours = f12(tmp_path, _eevee() if engine == "EEVEE" else engine)
    covered = exact[..., 3] > 0.01
    assert covered.mean() > 0.1
    psnr = _psnr(ours, exact[..., :3], covered)
    print(f"demo, {cam.name}: {engine} F12 vs exact {psnr:.1f} dB")
    assert psnr >= 28.0
