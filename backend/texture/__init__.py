"""Texturing: the mesh coloured from the photos into a UV texture atlas (stage.py runs it)."""
