"""A COLMAP model imported into Blender: cameras that see what COLMAP's cameras see, with
their photos behind them, and a colored point cloud that renders in its colors.

Everything runs in real Blender (bpy). Models are written as COLMAP text files here, from
known cameras, poses and points, so the tests need neither pycolmap nor a photo set.
"""

from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
pytestmark = pytest.mark.every_blender

from blender_addon.shared.colmap_io import read_model, write_text_model  # noqa: E402
from blender_addon.importers import (  # noqa: E402
    apply_camera_resolution,
    import_cameras,
    import_points,
    import_workspace_cameras,
    make_active_camera,
    set_point_size,
    sync_active_camera_resolution,
)
from blender_addon.importers import cameras as camera_importer  # noqa: E402
from blender_addon.importers import points as point_importer  # noqa: E402
from projection import colmap_project, points_in_view, random_rotation

# name: (model, width, height, params); off-centre principal points, fx != fy both ways, both orientations.
CAMERAS = {
    "landscape_fx_gt_fy": ("PINHOLE", 640, 480, [700.0, 560.0, 350.3, 221.7]),
    "landscape_fy_gt_fx": ("PINHOLE", 800, 533, [640.0, 910.0, 371.9, 290.2]),
    "portrait_fx_gt_fy": ("PINHOLE", 480, 640, [830.0, 610.0, 222.2, 345.6]),
    "portrait_fy_gt_fx": ("PINHOLE", 1000, 1500, [1200.0, 1430.0, 530.0, 712.0]),
    "portrait_simple_pinhole": ("SIMPLE_PINHOLE", 600, 900, [750.0, 280.5, 470.25]),
    "landscape_simple_radial": ("SIMPLE_RADIAL", 640, 480, [600.0, 300.0, 250.0, -0.08]),
}


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


def new_collection(name="Import"):
    collection = bpy.data.collections.new(name)
    bpy.context.scene.collection.children.link(collection)
    return collection


def save_photo(path: Path, width: int, height: int, color=(0.2, 0.5, 0.8)) -> Path:
    image = bpy.data.images.new(path.stem, width, height)
    image.pixels.foreach_set(np.tile([*color, 1.0], width * height).astype(np.float32))
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


def test_imported_cameras_project_like_colmap(tmp_path):
    """Every camera model and shape, through the importer, to Blender's own projection: < 0.5 px."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    rng = np.random.default_rng(3)
    cameras = {i: spec for i, spec in enumerate(CAMERAS.values(), start=1)}
    images = [(10 + i, random_rotation(rng), rng.uniform(-3, 3, 3), cid, f"photos/{name}.jpg")
              for i, (cid, name) in enumerate(zip(cameras, CAMERAS))]  # fmt: skip
    model = read_model(write_text_model(tmp_path / "model", cameras, images))
    objects = import_cameras(model, new_collection(), image_dir=None)
    scene = bpy.context.scene

    assert sorted(obj.name for obj in objects) == sorted(CAMERAS)
    by_name = {obj.name: obj for obj in objects}
    worst = {}
    for image_id, R, t, cid, _ in images:
        model_name, W, H, params = cameras[cid]
        fx, fy, cx, cy = model.cameras[cid].pinhole()
        obj = by_name[Path(model.images[image_id].name).stem]
        assert obj.type == "CAMERA" and tuple(obj["reconstruct_resolution"]) == (W, H)
        assert obj.users_collection[0].name == "Import"

        make_active_camera(scene, obj)
        assert scene.camera == obj
        assert (scene.render.resolution_x, scene.render.resolution_y) == (W, H)
        assert scene.render.resolution_percentage == 100

        points = points_in_view(R, t, W, H, fx, fy, cx, cy, rng)
        expected = colmap_project(R, t, fx, fy, cx, cy, points)
        ndc = np.array([world_to_camera_view(scene, obj, Vector(p)) for p in points])
        assert np.all(ndc[:, 2] > 0), "points must be in front of the Blender camera"
        blender_px = np.stack([ndc[:, 0] * W, (1.0 - ndc[:, 1]) * H], axis=1)
        worst[obj.name] = np.abs(blender_px - expected).max()
    print(f"worst projection difference per camera, px: {worst}")
    assert max(worst.values()) < 0.5, worst
    assert max(worst.values()) < 0.01, f"expected ~1e-3 px: {worst}"


def test_scene_resolution_follows_the_active_camera(tmp_path):
    cameras = {1: CAMERAS["landscape_fx_gt_fy"], 2: CAMERAS["portrait_fy_gt_fx"]}
    images = [(1, np.eye(3), np.zeros(3), 1, "a.jpg"), (2, np.eye(3), np.array([1.0, 0, 0]), 2, "b.jpg")]
    a, b = import_cameras(read_model(write_text_model(tmp_path, cameras, images)), new_collection())
    scene, render = bpy.context.scene, bpy.context.scene.render

    assert apply_camera_resolution(scene, a)
    assert (render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y) == (
        640, 480, 1.0, pytest.approx(700 / 560)
    )
    # Switched any other way: the handler follows, and leaves a preview percentage alone.
    scene.camera = b
    render.resolution_percentage = 25
    sync_active_camera_resolution(scene)
    assert (render.resolution_x, render.resolution_y) == (1000, 1500)
    assert (render.pixel_aspect_x, render.pixel_aspect_y) == (pytest.approx(1430 / 1200), 1.0)
    assert render.resolution_percentage == 25

    # Registered as a depsgraph handler, it follows a switch on the next update, without looping.
    bpy.app.handlers.depsgraph_update_post.append(sync_active_camera_resolution)
    try:
        scene.camera = a
        bpy.context.view_layer.update()
        assert (render.resolution_x, render.resolution_y) == (640, 480)
    finally:
        bpy.app.handlers.depsgraph_update_post.remove(sync_active_camera_resolution)

    bpy.utils.register_class(camera_importer.RECONSTRUCT_OT_set_active_camera)
    try:
        assert bpy.ops.reconstruct.set_active_camera(name=a.name) == {"FINISHED"}
        assert scene.camera == a and render.resolution_x == 640 and render.resolution_percentage == 100
        other = bpy.data.objects.new("not a camera", None)
        scene.collection.objects.link(other)
        with pytest.raises(RuntimeError, match="is not a camera"):
            bpy.ops.reconstruct.set_active_camera(name=other.name)
    finally:
        bpy.utils.unregister_class(camera_importer.RECONSTRUCT_OT_set_active_camera)

    plain = bpy.data.objects.new("plain", bpy.data.cameras.new("plain"))
    assert not apply_camera_resolution(scene, plain)


def test_photos_become_camera_backgrounds(tmp_path):
    cameras = {1: ("PINHOLE", 64, 48, [60.0, 60.0, 32.0, 24.0])}
    images = [(1, np.eye(3), np.zeros(3), 1, "sub/with_photo.png"), (2, np.eye(3), np.ones(3), 1, "z_missing.png")]
    model = read_model(write_text_model(tmp_path / "model", cameras, images))
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    photo = save_photo(tmp_path / "photos" / "sub" / "with_photo.png", 64, 48)

    with_photo, missing = import_cameras(model, new_collection(), image_dir=tmp_path / "photos")
    assert with_photo.name == "with_photo" and with_photo["reconstruct_image"] == "sub/with_photo.png"
    assert with_photo.data.show_background_images
    (background,) = with_photo.data.background_images
    assert Path(bpy.path.abspath(background.image.filepath)) == photo
    assert background.image.size[:] == (64, 48)
    assert background.frame_method == "STRETCH"
    assert not missing.data.show_background_images and len(missing.data.background_images) == 0

    # Importing again reuses the loaded photo.
    again, _ = import_cameras(model, new_collection("Again"), image_dir=tmp_path / "photos")
    assert again.data.background_images[0].image == background.image


def test_workspace_prefers_undistorted_model_and_photos(tmp_path):
    distorted = {1: ("SIMPLE_RADIAL", 640, 480, [600.0, 320.0, 240.0, -0.1])}
    undistorted = {1: ("PINHOLE", 652, 490, [600.0, 600.0, 326.0, 245.0])}
    images = [(1, np.eye(3), np.zeros(3), 1, "p.png")]
    write_text_model(tmp_path / "ws" / "sparse" / "model", distorted, images)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_photo(photos / "p.png", 640, 480)
    (tmp_path / "ws" / "summary.json").write_text(f'{{"photos": "{photos}"}}')

    (cam,) = import_workspace_cameras(tmp_path / "ws", new_collection("sfm"))
    assert tuple(cam["reconstruct_resolution"]) == (640, 480)
    assert Path(cam.data.background_images[0].image.filepath) == photos / "p.png"

    write_text_model(tmp_path / "ws" / "undistorted" / "sparse", undistorted, images)
    (tmp_path / "ws" / "undistorted" / "images").mkdir()
    save_photo(tmp_path / "ws" / "undistorted" / "images" / "p.png", 652, 490)
    (cam,) = import_workspace_cameras(tmp_path / "ws", new_collection("undistorted"))
    assert tuple(cam["reconstruct_resolution"]) == (652, 490)
    assert Path(cam.data.background_images[0].image.filepath) == tmp_path / "ws" / "undistorted" / "images" / "p.png"


def read_colors(obj) -> np.ndarray:  # [N, 3] sRGB bytes as stored
    attr = obj.data.color_attributes[point_importer.COLOR_ATTRIBUTE]
    values = np.empty(len(attr.data) * 4, np.float32)
    attr.data.foreach_get("color_srgb", values)
    return np.round(values.reshape(-1, 4)[:, :3] * 255).astype(np.int64)


def radius_and_attributes(cloud) -> tuple[float, bool]:
    """The (single) radius of an evaluated point cloud, and whether it carries the color attribute."""
    radius = np.empty(len(cloud.points), np.float32)
    cloud.attributes["radius"].data.foreach_get("value", radius)
    assert np.ptp(radius) == 0
    return float(radius[0]), point_importer.COLOR_ATTRIBUTE in cloud.attributes


def test_point_cloud_holds_the_points_and_their_colors():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(10_000, 3)) * 5
    rgb = rng.integers(0, 256, size=(10_000, 3), dtype=np.uint8)
    obj = import_points("cloud", xyz, rgb, new_collection(), point_size=0.02)

    assert obj.type == "MESH" and len(obj.data.vertices) == 10_000 and len(obj.data.edges) == 0
    co = np.empty(30_000, np.float32)
    obj.data.vertices.foreach_get("co", co)
    np.testing.assert_allclose(co.reshape(-1, 3), xyz, rtol=1e-6, atol=1e-6)
    attr = obj.data.color_attributes[point_importer.COLOR_ATTRIBUTE]
    assert attr.domain == "POINT" and obj.data.color_attributes.active_color == attr
    np.testing.assert_array_equal(read_colors(obj), rgb)

    modifier = obj.modifiers[point_importer.MODIFIER]
    assert modifier.type == "NODES" and modifier.node_group.name == point_importer.NODE_GROUP
    assert point_importer.get_point_size(obj) == pytest.approx(0.02)
    set_point_size(obj, 0.5)
    assert point_importer.get_point_size(obj) == pytest.approx(0.5)

    # The evaluated object is a point cloud with the radius and the colors.
    # Blender 4.x has no Object.evaluated_geometry(): the depsgraph's instances, read there.
    depsgraph = bpy.context.evaluated_depsgraph_get()
    clouds = [(len(i.object.data.points), radius_and_attributes(i.object.data), i.object.data.materials[0].name)
              for i in depsgraph.object_instances
              if i.object.type == "POINTCLOUD" and i.object.original == obj]
    assert clouds == [(10_000, (0.5, True), point_importer.MATERIAL)]

    # A second cloud shares the node group and material; float colors work too.
    other = import_points("floats", xyz[:10], rgb[:10] / 255.0, new_collection("b"))
    assert other.modifiers[0].node_group == modifier.node_group
    assert len(bpy.data.node_groups) == 1 and len(bpy.data.materials) == 1
    np.testing.assert_array_equal(read_colors(other), rgb[:10])
    empty = import_points("empty", np.zeros((0, 3)), np.zeros((0, 3), np.uint8), new_collection())
    assert len(empty.data.vertices) == 0


def test_point_cloud_renders_in_its_colors_from_an_imported_camera(tmp_path):
    """Cycles, from an imported camera: points left of the camera's centre red, right green."""
    rng = np.random.default_rng(1)
    W, H, f = 640, 480, 600.0
    R, t = random_rotation(rng), rng.uniform(-2, 2, 3)
    px = rng.uniform([0, 0], [W, H], size=(10_000, 2))
    depth = rng.uniform(4.0, 6.0, size=10_000)
    cam_xyz = np.stack([(px[:, 0] - W / 2) / f * depth, (px[:, 1] - H / 2) / f * depth, depth], axis=1)
    xyz = (cam_xyz - t) @ R
    red, green = np.array([220, 40, 40], np.uint8), np.array([40, 200, 60], np.uint8)
    rgb = np.where((cam_xyz[:, 0] < 0)[:, None], red, green)
    folder = write_text_model(tmp_path / "model", {1: ("PINHOLE", W, H, [f, f, W / 2, H / 2])},
                              [(1, R, t, 1, "view.jpg")], xyz, rgb)  # fmt: skip

    model = read_model(folder)
    collection = new_collection()
    (cam,) = import_cameras(model, collection)
    import_points("cloud", model.xyz, model.rgb, collection, point_size=0.08)
    scene = bpy.context.scene
    make_active_camera(scene, cam)
    scene.render.resolution_percentage = 10  # 64 x 48
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(tmp_path / "render.png")
    bpy.ops.render.render(write_still=True)

    image = bpy.data.images.load(str(tmp_path / "render.png"))
    w, h = image.size
    assert (w, h) == (64, 48)
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    pixels = (pixels.reshape(h, w, 4)[::-1, :, :3] * 255)  # top row first, like the photo
    lit = pixels.max(axis=2) > 30
    assert lit.mean() > 0.5, f"only {lit.mean():.0%} of the frame shows points"
    for half, color in ((pixels[:, : w // 2 - 2], red), (pixels[:, w // 2 + 2 :], green)):
        shown = half[half.max(axis=2) > 30]
        assert np.abs(np.median(shown, axis=0) - color).max() < 25, (np.median(shown, axis=0), color)
        assert (shown.argmax(axis=1) == np.argmax(color)).mean() > 0.95  # the split is where COLMAP puts it


def test_import_operator_builds_a_collection_and_reports_errors(tmp_path):
    from blender_addon.ui import import_colmap

    rng = np.random.default_rng(2)
    cameras = {1: CAMERAS["landscape_simple_radial"]}
    images = [(i, random_rotation(rng), rng.uniform(-1, 1, 3), 1, f"img{i}.png") for i in range(1, 4)]
    xyz, rgb = rng.normal(size=(500, 3)), rng.integers(0, 256, (500, 3), dtype=np.uint8)
    folder = write_text_model(tmp_path / "scan" / "sparse" / "0", cameras, images, xyz, rgb)
    (tmp_path / "scan" / "images").mkdir()
    save_photo(tmp_path / "scan" / "images" / "img1.png", 64, 48)
    (tmp_path / "empty").mkdir()

    for cls in import_colmap.classes:
        bpy.utils.register_class(cls)
    try:
        assert bpy.ops.reconstruct.import_colmap(directory=str(folder), point_size=0.05) == {"FINISHED"}
        collection = bpy.data.collections["scan/sparse/0"]
        cams = [o for o in collection.objects if o.type == "CAMERA"]
        clouds = [o for o in collection.objects if o.type == "MESH"]
        assert sorted(o.name for o in cams) == ["img1", "img2", "img3"]
        assert len(clouds) == 1 and len(clouds[0].data.vertices) == 500
        assert point_importer.get_point_size(clouds[0]) == pytest.approx(0.05)
        assert bpy.context.scene.camera == bpy.data.objects["img1"]
        # Photos found beside the model, COLMAP's layout.
        assert bpy.data.objects["img1"].data.show_background_images

        # Choosing a file in the model folder works too; only points this time.
        assert bpy.ops.reconstruct.import_colmap(filepath=str(folder / "points3D.txt"), import_cameras=False) == {
            "FINISHED"
        }
        assert len(bpy.data.collections) == 2

        with pytest.raises(RuntimeError, match="no COLMAP model in"):
            bpy.ops.reconstruct.import_colmap(directory=str(tmp_path / "empty"))
        (folder / "images.txt").unlink()
        with pytest.raises(RuntimeError, match=r"images\.txt is missing"):
            bpy.ops.reconstruct.import_colmap(directory=str(folder))
        assert len(bpy.data.collections) == 2  # nothing half-made
    finally:
        for cls in reversed(import_colmap.classes):
            bpy.utils.unregister_class(cls)


def _datablocks() -> dict[str, list[str]]:
    kinds = ("objects", "meshes", "cameras", "materials", "node_groups", "images", "collections")
    return {kind: sorted(d.name for d in getattr(bpy.data, kind)) for kind in kinds}


def test_a_failed_import_leaves_the_scene_and_the_file_as_they_were(tmp_path, monkeypatch):
    """What Blender 4.x did to the first wave: the points' material failed half-way
    (no node tree), after the node group was tagged as finished. Now a failure while
    building leaves nothing behind, and the next import builds everything whole."""
    from blender_addon.importers import mesh as mesh_importer
    from blender_addon.importers.results import import_workspace
    from blender_addon.shared.ply_io import write_ply

    rng = np.random.default_rng(3)
    xyz, rgb = rng.normal(size=(300, 3)), rng.integers(0, 256, (300, 3), dtype=np.uint8)
    ws = tmp_path / "ws"
    images = [(i, random_rotation(rng), rng.uniform(-1, 1, 3), 1, f"img{i}.png") for i in range(1, 4)]
    write_text_model(ws / "sparse" / "model", {1: CAMERAS["landscape_fx_gt_fy"]}, images, xyz, rgb)
    vertices = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "red": rgb[:, 0], "green": rgb[:, 1],
                "blue": rgb[:, 2]}
    (ws / "mesh").mkdir()
    write_ply(ws / "mesh" / "mesh.ply", vertices, faces=np.array([[0, 1, 2], [2, 3, 4]], np.int32))
    user = new_collection("the user's")  # something of the user's, which stays
    before = _datablocks()

    def half_built(tree):  # the material fails after a node is made (as 4.x's missing tree did)
        tree.nodes.new("ShaderNodeEmission")
        raise AttributeError("'NoneType' object has no attribute 'nodes'")

    monkeypatch.setattr(mesh_importer, "_build_mesh_material", half_built)
    with pytest.raises(AttributeError):
        import_workspace(ws, "scan", bpy.context.scene)
    assert _datablocks() == before and bpy.context.scene.collection.children[:] == [user]

    monkeypatch.undo()
    collection = import_workspace(ws, "scan", bpy.context.scene)
    mesh = next(o for o in collection.objects if o.type == "MESH" and o.name.endswith(" mesh"))
    material = mesh.data.materials[0]
    assert material[mesh_importer.TAG] == 2 and {n.bl_idname for n in material.node_tree.nodes} == {
        "ShaderNodeVertexColor", "ShaderNodeEmission", "ShaderNodeOutputMaterial"}
    points = next(o for o in collection.objects if o.name.endswith(" sparse points"))
    assert point_importer.get_point_size(points) > 0
