"""Reconstruct: photos to 3D inside Blender (Blender extension package).

This package must import without bpy: the backend shares `protocol.py` and
`camera_math.py` with it. Everything that needs bpy is imported in register().
"""
