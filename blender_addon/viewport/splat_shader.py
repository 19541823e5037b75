"""The GLSL that draws Gaussian splats in Blender's viewport as the backend's
exact render draws them (the conventions of shared/splat_math.py, whose
constants are written into the source here, so the two cannot drift apart).

One instanced quad per splat, drawn back to front: instance k draws the splat
whose index the `order` texture holds at k (sorted on a worker thread, see
splat_draw.py). The vertex shader fetches the splat from data textures,
projects its covariance with the view's Jacobian (perspective or
orthographic), evaluates its spherical harmonics for the direction from the
camera, and places the quad over its box; the fragment shader evaluates the
Gaussian at the pixel and blends it over what lies behind ("over", straight
alpha). The depth test against the scene's depth hides splats behind meshes.

Why textures: Blender's Python `gpu` module has no storage buffers or
per-instance attributes, and a texture fetch by gl_InstanceID lets a resort
upload one float per splat instead of rebuilding a vertex buffer.
"""
from __future__ import annotations

from ..shared import splat_math as sm

TEXTURE_WIDTH = 4096  # texels per row of every data texture; splat i lives at texel i (or i * stride + k)


def sh_texels(coefficients: int) -> int:
    """Texels (4 floats) per splat that hold `coefficients` RGB coefficients."""
    return -(-3 * coefficients // 4)


# The rest of the view, in a uniform buffer: the camera in the object's frame
# and the SH coefficients per channel; the viewport's size and SH texels per splat.
VIEW_STRUCT = "struct SplatView { vec4 camera; vec4 viewport; };"


def view_block(camera, sh_count: int, width: int, height: int, sh_stride: int) -> list[float]:
    """The SplatView values, in its layout."""
    return [*map(float, camera), float(sh_count), float(width), float(height), float(sh_stride), 0.0]


_COMMON = f"""
ivec2 texel_of(int i) {{ return ivec2(i % {TEXTURE_WIDTH}, i / {TEXTURE_WIDTH}); }}
"""

VERTEX = _COMMON + f"""
vec3 sh_colour(int i, vec3 dir) {{
  float c[48];
  int sh_stride = int(view.viewport.z);
  int base = i * sh_stride;
  for (int k = 0; k < sh_stride; k++) {{
    vec4 t = texelFetch(sh, texel_of(base + k), 0);
    c[4 * k] = t.x; c[4 * k + 1] = t.y; c[4 * k + 2] = t.z; c[4 * k + 3] = t.w;
  }}
  float b[16];
  int sh_count = int(view.camera.w);
  b[0] = {sm.SH_C0};
  if (sh_count > 1) {{
    float x = dir.x, y = dir.y, z = dir.z;
    b[1] = -{sm.SH_C1} * y; b[2] = {sm.SH_C1} * z; b[3] = -{sm.SH_C1} * x;
    if (sh_count > 4) {{
      float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
      b[4] = {sm.SH_C2[0]} * xy; b[5] = {sm.SH_C2[1]} * yz; b[6] = {sm.SH_C2[2]} * (2.0 * zz - xx - yy);
      b[7] = {sm.SH_C2[3]} * xz; b[8] = {sm.SH_C2[4]} * (xx - yy);
      if (sh_count > 9) {{
        b[9] = {sm.SH_C3[0]} * y * (3.0 * xx - yy); b[10] = {sm.SH_C3[1]} * xy * z;
        b[11] = {sm.SH_C3[2]} * y * (4.0 * zz - xx - yy); b[12] = {sm.SH_C3[3]} * z * (2.0 * zz - 3.0 * xx - 3.0 * yy);
        b[13] = {sm.SH_C3[4]} * x * (4.0 * zz - xx - yy); b[14] = {sm.SH_C3[5]} * z * (xx - yy);
        b[15] = {sm.SH_C3[6]} * x * (xx - 3.0 * yy);
      }}
    }}
  }}
  vec3 rgb = vec3(0.5);
  for (int j = 0; j < sh_count; j++) {{
    rgb += b[j] * vec3(c[3 * j], c[3 * j + 1], c[3 * j + 2]);
  }}
  return max(rgb, vec3(0.0));
}}

void cull() {{ gl_Position = vec4(2.0, 2.0, 2.0, 1.0); opacity = 0.0; }}

void main() {{
  vec2 viewport = view.viewport.xy;
  int i = int(texelFetch(order, texel_of(gl_InstanceID / 4), 0)[gl_InstanceID % 4]);  // 4 indices a texel
  vec4 mo = texelFetch(mean_opacity, texel_of(i), 0);
  vec4 q = normalize(texelFetch(rotation, texel_of(i), 0));
  vec3 s = texelFetch(scale, texel_of(i), 0).xyz;
  vec4 pv = modelview * vec4(mo.xyz, 1.0);
  bool perspective = projection[3][3] == 0.0;
  float d = perspective ? -pv.z : 1.0;
  if (perspective && d < {sm.NEAR_PLANE}) {{ cull(); return; }}
  float w = q.x, x = q.y, y = q.z, z = q.w;
  mat3 R = mat3(1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + w * z), 2.0 * (x * z - w * y),
                2.0 * (x * y - w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z + w * x),
                2.0 * (x * z + w * y), 2.0 * (y * z - w * x), 1.0 - 2.0 * (x * x + y * y));
  mat3 M = mat3(modelview) * mat3(R[0] * s.x, R[1] * s.y, R[2] * s.z);
  float fx = projection[0][0] * viewport.x * 0.5, fy = projection[1][1] * viewport.y * 0.5;
  vec3 j0, j1;
  if (perspective) {{
    // gsplat: splats beyond the view's edge (plus 30%) take the Jacobian there.
    float cx = viewport.x * 0.5 * (1.0 - projection[2][0]), cy = viewport.y * 0.5 * (1.0 - projection[2][1]);
    float tan_x = 0.5 * viewport.x / fx, tan_y = 0.5 * viewport.y / fy;
    float tx = d * clamp(pv.x / d, -(cx / fx + 0.3 * tan_x), (viewport.x - cx) / fx + 0.3 * tan_x);
    float ty = d * clamp(pv.y / d, -(cy / fy + 0.3 * tan_y), (viewport.y - cy) / fy + 0.3 * tan_y);
    j0 = vec3(fx / d, 0.0, fx * tx / (d * d));
    j1 = vec3(0.0, fy / d, fy * ty / (d * d));
  }} else {{
    j0 = vec3(fx, 0.0, 0.0);
    j1 = vec3(0.0, fy, 0.0);
  }}
  vec3 u = j0 * M, v = j1 * M;
  float a = dot(u, u) + {sm.EPS2D}, b = dot(u, v), c = dot(v, v) + {sm.EPS2D};
  float det = a * c - b * b;
  if (det <= 0.0 || mo.w < {sm.ALPHA_MIN}) {{ cull(); return; }}
  float extend = min(sqrt(2.0 * log(max(mo.w / {sm.ALPHA_MIN}, 1.0))), {sm.MAX_EXTEND});
  vec2 radius = ceil(extend * sqrt(vec2(a, c)));
  vec4 clip = projection * pv;
  offset = corner * radius;
  conic = vec3(c, -b, a) / det;
  opacity = mo.w;
  colour = sh_colour(i, normalize(mo.xyz - view.camera.xyz));
  gl_Position = vec4(clip.xy + offset * 2.0 / viewport * clip.w, clip.z, clip.w);
}}
"""

FRAGMENT = f"""
void main() {{
  float q = conic.x * offset.x * offset.x + 2.0 * conic.y * offset.x * offset.y + conic.z * offset.y * offset.y;
  float alpha = min({sm.ALPHA_MAX}, opacity * exp(-0.5 * q));
  if (q < 0.0 || alpha < {sm.ALPHA_MIN}) {{ discard; }}
  FragColor = vec4(colour, alpha);
}}
"""


def create_shader():
    """The compiled shader (call with a GPU context: from a draw callback or off-screen)."""
    import gpu

    info = gpu.types.GPUShaderCreateInfo()
    for name in ("modelview", "projection"):  # 128 bytes: the most push constants every GPU backend takes
        info.push_constant("MAT4", name)
    info.typedef_source(VIEW_STRUCT)
    info.uniform_buf(0, "SplatView", "view")
    for slot, name in enumerate(("order", "mean_opacity", "rotation", "scale", "sh")):
        info.sampler(slot, "FLOAT_2D", name)
    smooth = gpu.types.GPUStageInterfaceInfo("reconstruct_splat_smooth")
    smooth.smooth("VEC2", "offset")
    flat = gpu.types.GPUStageInterfaceInfo("reconstruct_splat_flat")
    flat.flat("VEC3", "conic")
    flat.flat("VEC3", "colour")
    flat.flat("FLOAT", "opacity")
    info.vertex_out(smooth)
    info.vertex_out(flat)
    info.vertex_in(0, "VEC2", "corner")
    info.fragment_out(0, "VEC4", "FragColor")
    info.vertex_source(VERTEX)
    info.fragment_source(FRAGMENT)
    return gpu.shader.create_from_info(info)
