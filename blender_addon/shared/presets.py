"""The quality presets: the option values each one sets (the rest keep their
defaults). The backend's options start from them; the sidebar describes them
from the same table."""
from __future__ import annotations

QUALITY_PRESETS: dict[str, dict[str, dict]] = {
    "fast": {"sfm": {"max_image_size": 1024, "max_num_features": 4096},
             "dense": {"max_image_size": 800, "face_budget": 100_000},
             "splats": {"steps": 3000, "max_image_size": 800}},
    "balanced": {"sfm": {"max_image_size": 2000, "max_num_features": 8192},
                 "dense": {"max_image_size": 1600, "face_budget": 300_000},
                 "splats": {"steps": 7000, "max_image_size": 1600}},
    "high": {"sfm": {"max_image_size": 3200, "max_num_features": 16384},
             "dense": {"max_image_size": 3200, "face_budget": 1_000_000},
             "splats": {"steps": 30_000, "max_image_size": 3200}},
}

NOTES = {"fast": "quick previews", "high": "slow, most accurate"}


def describe(quality: str) -> str:
    """What a preset sets, in a user's words (the sidebar's tooltip)."""
    p = QUALITY_PRESETS[quality]
    text = (f"Features at {p['sfm']['max_image_size']} px, {p['sfm']['max_num_features']} per photo; "
            f"depth maps at {p['dense']['max_image_size']} px; {p['dense']['face_budget']:,}-face mesh; "
            f"splats: {p['splats']['steps']:,} steps at {p['splats']['max_image_size']} px")
    return text + (f": {NOTES[quality]}" if quality in NOTES else "")
