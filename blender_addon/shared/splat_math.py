"""How a Gaussian splat becomes pixels: the conventions the backend's exact
render (gsplat on CUDA, backend/splats/raster.py elsewhere) and the add-on's
viewport drawing (blender_addon/viewport/splat_shader.py) both follow, written
once so the two draw the same image.

- The 2D covariance of the projected Gaussian gets EPS2D px^2 on its diagonal
  (gsplat's anti-aliasing blur, without its opacity compensation).
- A splat covers the box of EXTEND(opacity) standard deviations, where
  opacity * exp(-extend^2 / 2) falls to ALPHA_MIN, at most MAX_EXTEND.
- alpha = min(ALPHA_MAX, opacity * exp(-q/2)); contributions under ALPHA_MIN
  are skipped; splats nearer than NEAR_PLANE are not drawn.
- Colour = 0.5 + the real spherical harmonics (3DGS order and signs) at the
  unit direction camera -> splat, clamped at 0.
"""
from __future__ import annotations

EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
MAX_EXTEND = 3.33
NEAR_PLANE = 0.01

# The real spherical-harmonic basis constants, degrees 0 to 3.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def sh_coefficients(degree: int) -> int:
    """Coefficients per colour channel of a spherical harmonic of `degree`."""
    return (degree + 1) ** 2



def sh_basis_terms(degree: int, x, y, z) -> list:
    """The (degree + 1)^2 real SH basis functions (3DGS order and signs) at unit
    directions with components x, y, z: arrays of any kind that multiply
    elementwise (numpy in the add-on, torch in the backend)."""
    out = [SH_C0 + 0.0 * x]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return out
