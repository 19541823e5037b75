"""Gaussian splats: training, our CPU rasteriser, renders for any camera."""
