"""A user points the backend at the wrong thing: every case ends with a
message that says what happened and what to do, and nothing is lost."""
from __future__ import annotations

from conftest import blob_photo, copy_photos, read_json, run_backend, tree_digest


def test_missing_folder(tmp_path):
    proc = run_backend("run", tmp_path / "no-such-folder", "--workspace", tmp_path / "ws")
    assert proc.returncode == 2
    assert "The photo folder" in proc.stderr and "does not exist" in proc.stderr
    assert "hint: Choose the folder that holds your photos." in proc.stderr


def test_empty_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    proc = run_backend("run", tmp_path / "photos", "--workspace", tmp_path / "ws")
    assert proc.returncode == 2
    assert "is empty" in proc.stderr and "Copy your photos" in proc.stderr


def test_folder_without_images(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("not a photo")
    (photos / "scan.pdf").write_bytes(b"%PDF-1.4")
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    assert proc.returncode == 2
    assert "No photos found" in proc.stderr
    assert "notes.txt" in proc.stderr and "scan.pdf" in proc.stderr
    assert "JPEG, PNG, TIFF" in proc.stderr


def test_one_image(tmp_path, temple):
    photos = copy_photos(temple / "images", tmp_path / "photos", ["templeSR0001.jpg"])
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    assert proc.returncode == 2
    assert "Only one usable photo (templeSR0001.jpg)" in proc.stderr
    assert "at least 3 overlapping photos" in proc.stderr


def test_only_corrupt_images(tmp_path, temple):
    photos = tmp_path / "photos"
    photos.mkdir()
    data = (temple / "images" / "templeSR0001.jpg").read_bytes()
    (photos / "a.jpg").write_bytes(data[: len(data) // 3])
    (photos / "b.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    assert proc.returncode == 2
    assert "None of the 2 images" in proc.stderr and "a.jpg, b.jpg" in proc.stderr
    assert "truncated or corrupt" in proc.stderr


def test_bad_files_are_skipped_by_name_and_photos_are_untouched(tmp_path, temple):
    """Truncated and corrupt JPEGs and stray files are skipped with a warning
    naming each one; the good photos still reconstruct; nothing in the photo
    folder changes."""
    photos = copy_photos(temple / "images", tmp_path / "photos")
    data = (photos / "templeSR0001.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20)
    (photos / "readme.txt").write_text("camera notes")
    before = tree_digest(photos)
    ws = tmp_path / "ws"
    proc = run_backend("run", photos, "--workspace", ws, "--stages", "features")
    assert proc.returncode == 0, proc.stderr
    for name in ("truncated.jpg", "corrupt.jpg"):
        assert f"warning: Skipped {name}: unreadable or corrupt image" in proc.stderr
    assert "warning: Skipped readme.txt: not an image file" in proc.stderr
    summary = read_json(ws / "summary.json")
    assert summary["total_images"] == 16
    assert {s["name"] for s in summary["skipped_files"]} == {"truncated.jpg", "corrupt.jpg", "readme.txt"}
    assert tree_digest(photos) == before


def test_images_too_different_to_match(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        blob_photo(i).save(photos / f"unrelated_{i}.jpg", quality=95)
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    assert proc.returncode == 2
    assert "Could not reconstruct" in proc.stderr
    assert "tried matching: exhaustive on 4 photos" in proc.stderr  # what was tried
    assert "overlapping viewpoints" in proc.stderr
    # The finished feature stage is kept for the next attempt.
    assert (tmp_path / "ws" / "sparse" / "features.db").exists()


def test_unwritable_workspace(tmp_path, temple):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # root ignores permissions, so use a path that cannot be a folder
    proc = run_backend("run", temple / "images", "--workspace", blocker / "ws")
    assert proc.returncode == 2
    assert "Cannot write to the workspace" in proc.stderr
    assert "Choose a folder you can write to" in proc.stderr


def test_workspace_must_not_be_the_photo_folder(tmp_path, temple):
    photos = copy_photos(temple / "images", tmp_path / "photos", ["templeSR0001.jpg", "templeSR0002.jpg"])
    before = tree_digest(photos)
    proc = run_backend("run", photos, "--workspace", photos)
    assert proc.returncode == 2
    assert "must not be the photo folder" in proc.stderr
    assert tree_digest(photos) == before


def test_bad_option_values_are_explained(tmp_path, temple):
    proc = run_backend("run", temple / "images", "--workspace", tmp_path / "ws", "--max-image-size", "10")
    assert proc.returncode == 2
    assert "max_image_size=10 is too small" in proc.stderr
