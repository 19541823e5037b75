"""The modules both sides use (the add-on inside Blender, the backend in its own environment): no bpy here; see README.md."""
