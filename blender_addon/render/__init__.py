"""F12: the splats in Blender's renders (drawn per frame, laid over the render by the compositor)."""
