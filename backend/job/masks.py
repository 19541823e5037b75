"""Masks beside the photos: COLMAP's convention, one PNG per photo named
`<photo name>.png` (photo.jpg -> photo.jpg.png), black where the photo is to
be ignored (a turntable, a shadow, a passer-by, the sky). Checked here, in
the job runner, before any stage runs, so a folder that does not fit the
photos gets one message naming the photos, and nothing is written."""
from __future__ import annotations

import os
from pathlib import Path

from backend.errors import ErrorCode, ReconstructError
from backend.job.photos import PhotoSet, resolve_photo_folder


def mask_name(photo: str) -> str:
    return f"{photo}.png"


def _listed(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_masks(folder: str | os.PathLike, photos: PhotoSet) -> list:
    """The masks' identity (name, size, time of each), for the stages' hashes; a user's
    message when the folder is missing, a photo has no mask, or a mask is not the
    photo's size (as displayed) or cannot be read."""
    from PIL import Image, UnidentifiedImageError

    path = resolve_photo_folder(folder, "mask folder")
    hint = ("Masks are PNGs named after their photo with .png added (photo.jpg -> photo.jpg.png), the photo's "
            "size as displayed, black where the photo is to be ignored, white elsewhere.")
    if not path.is_dir():
        raise ReconstructError(ErrorCode.BAD_MASKS, f"The mask folder {path} does not exist or is not a folder.",
                               hint, {"masks": str(path)})
    missing, wrong, unreadable, identity = [], [], [], []
    for photo in photos.photos:
        mask = path / mask_name(photo.name)
        try:
            st = mask.stat()
            with Image.open(mask) as im:
                size = im.size
        except FileNotFoundError:
            missing.append(photo.name)
            continue
        except (OSError, UnidentifiedImageError, ValueError):
            unreadable.append(mask.name)
            continue
        if size != (photo.width, photo.height):
            wrong.append(f"{mask.name} is {size[0]}x{size[1]}, its photo {photo.width}x{photo.height}")
        identity.append((mask.name, st.st_size, st.st_mtime_ns))
    if missing:
        raise ReconstructError(
            ErrorCode.BAD_MASKS, f"No mask for {len(missing)} of {len(photos.photos)} photos in {path}: "
            f"{_listed(missing)}. Nothing was changed.", hint + " Add the missing masks (white where all of "
            "the photo counts), or run without masks.", {"masks": str(path), "missing": missing})
    if wrong:
        raise ReconstructError(ErrorCode.BAD_MASKS, f"{len(wrong)} masks in {path} are not the size of their "
                               f"photo: {_listed(wrong, 3)}. Nothing was changed.", hint,
                               {"masks": str(path), "wrong_size": wrong})
    if unreadable:
        raise ReconstructError(ErrorCode.BAD_MASKS, f"{len(unreadable)} masks in {path} cannot be read as "
                               f"images: {_listed(unreadable)}. Nothing was changed.", hint,
                               {"masks": str(path), "unreadable": unreadable})
    return [str(path), identity]


def undistort_masks(masks: Path, model_dir: Path, undistorted_model: Path, out: Path) -> int:
    """Each photo's mask in its undistorted (pinhole) image's geometry, for the dense
    stages: every undistorted pixel looks up the mask where its ray meets the original
    image (pycolmap's cameras do the lens maths; nearest pixel, so masks stay binary)."""
    import numpy as np
    import pycolmap
    from PIL import Image

    original = pycolmap.Reconstruction(str(model_dir))
    pinhole = pycolmap.Reconstruction(str(undistorted_model))
    by_name = {im.name: im for im in original.images.values()}
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for image in pinhole.images.values():
        if image.name not in by_name:
            continue
        cam_u, cam_d = pinhole.cameras[image.camera_id], original.cameras[by_name[image.name].camera_id]
        with Image.open(masks / mask_name(image.name)) as im:
            mask = np.asarray(im.convert("L")) >= 128
        ys, xs = np.mgrid[0:cam_u.height, 0:cam_u.width]
        pixels = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1).astype(np.float64)
        rays = cam_u.cam_from_img(pixels)
        src = cam_d.img_from_cam(np.concatenate([rays, np.ones((len(rays), 1))], axis=1), check_cheirality=False)
        sx = np.clip(np.floor(src[:, 0]).astype(int), 0, mask.shape[1] - 1)
        sy = np.clip(np.floor(src[:, 1]).astype(int), 0, mask.shape[0] - 1)
        inside = (src[:, 0] >= 0) & (src[:, 0] < mask.shape[1]) & (src[:, 1] >= 0) & (src[:, 1] < mask.shape[0])
        kept = (mask[sy, sx] & inside).reshape(cam_u.height, cam_u.width)
        Image.fromarray(np.where(kept, 255, 0).astype(np.uint8)).save(out / mask_name(image.name))
        count += 1
    return count
