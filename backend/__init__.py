"""The compute backend: photos -> workspace stages -> standard files.

Runs in its own Python environment (numpy, pycolmap, torch, ...), started by
the Blender add-on (`python -m backend serve`) or from a shell
(`python -m backend run PHOTOS --workspace DIR`).
"""
from blender_addon.shared.protocol import __version__

__all__ = ["__version__"]
