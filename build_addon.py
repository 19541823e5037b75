"""Build the installable Blender extension zip (Blender 4.2+ `blender_manifest.toml`).

Not built yet: the add-on itself arrives with the Blender add-on issue. This
script will then write dist/reconstruct-<version>.zip holding blender_addon/
(with protocol.py and camera_math.py), a generated blender_manifest.toml whose
version is blender_addon.protocol.__version__, and msgpack as a bundled wheel.
"""
import sys

if __name__ == "__main__":
    print(__doc__.strip(), file=sys.stderr)
    sys.exit(1)
