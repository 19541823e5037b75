"""The quality presets: the option values each one sets (the rest keep their
defaults). The backend's options start from them; the sidebar describes them
from the same table."""
from __future__ import annotations

QUALITY_PRESETS: dict[str, dict[str, dict]] = {
    "fast": {"sfm": {"max_image_size": 1024, "max_num_features": 4096},
             "dense": {"max_image_size": 800, "face_budget": 100_000},
             "splats": {"steps": 3000, "max_image_size": 800}, "texture": {"size": 2048}},
    "balanced": {"sfm": {"max_image_size": 2000, "max_num_features": 8192},
                 "dense": {"max_image_size": 1600, "face_budget": 300_000},
                 "splats": {"steps": 7000, "max_image_size": 1600}, "texture": {"size": 4096}},
    "high": {"sfm": {"max_image_size": 3200, "max_num_features": 16384},
             "dense": {"max_image_size": 3200, "face_budget": 1_000_000},
             "splats": {"steps": 30_000, "max_image_size": 3200}, "texture": {"size": 8192}},
}

CPU_PRESETS: dict[str, dict[str, dict]] = {
    "fast": {"splats": {"steps": 150, "max_image_size": 192, "max_splats": 50_000}},
    "balanced": {"dense": {"max_image_size": 1000, "face_budget": 200_000},
                 "splats": {"steps": 300, "max_image_size": 256, "max_splats": 100_000}},
    "high": {"dense": {"max_image_size": 1600, "face_budget": 300_000},
             "splats": {"steps": 1500, "max_image_size": 400, "max_splats": 300_000}},
}
"""What replaces a preset's values for a stage group that will run on the CPU
(its device auto without a CUDA GPU, or cpu). Options the user set still win.
Why these: on a 2-core CPU our splat rasteriser runs about 0.1-0.5 s a step at
96-256 px and about 3 s at 640 px (benchmarks/results/cpu_defaults.md), so the
GPU presets' 7000 steps at 1600 px would take hours; 300 steps at 256 px keep
the temple set under 10 minutes with a held-out PSNR of 28.2 dB (the splats started at
the dense points; 19.3 dB from the sparse points). Dense
stereo costs about 3-6 s per megapixel of depth map on 2 cores, so 1000 px
keeps fountain's depth maps near a minute. Feature extraction (pycolmap's
own CPU SIFT) is cheap at the GPU presets' sizes and keeps them."""

NOTES = {"fast": "quick previews", "high": "slow, most accurate"}


def describe(quality: str) -> str:
    """What a preset sets, in a user's words (the sidebar's tooltip)."""
    p = QUALITY_PRESETS[quality]
    text = (f"Features at {p['sfm']['max_image_size']} px, {p['sfm']['max_num_features']} per photo; "
            f"depth maps at {p['dense']['max_image_size']} px; {p['dense']['face_budget']:,}-face mesh; "
            f"splats: {p['splats']['steps']:,} steps at {p['splats']['max_image_size']} px")
    return text + (f": {NOTES[quality]}" if quality in NOTES else "")


def describe_cpu(quality: str) -> str:
    """What the preset becomes for the stages that run on the CPU."""
    p = {group: {**QUALITY_PRESETS[quality][group], **CPU_PRESETS[quality].get(group, {})}
         for group in ("dense", "splats")}
    return (f"On the CPU: depth maps at {p['dense']['max_image_size']} px, {p['dense']['face_budget']:,}-face mesh; "
            f"splats: {p['splats']['steps']:,} steps at {p['splats']['max_image_size']} px, "
            f"at most {p['splats']['max_splats']:,}")
