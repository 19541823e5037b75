"""What kind of input a path is, by its name: both the add-on (the sidebar's
picker) and the backend (the job's input) decide it the same way."""
from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mts", ".m2ts", ".3gp", ".mpg",
                              ".mpeg", ".wmv", ".flv"})


def is_video(path) -> bool:
    """A file name that says video (what is inside is checked when it is decoded)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS
