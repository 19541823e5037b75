"""What the add-on draws in the 3D viewport itself (Blender's `gpu` module): the splats as Gaussians."""
