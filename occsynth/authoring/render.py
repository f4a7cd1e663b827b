"""Offscreen rendering of trimesh meshes: the one place pyrender (and OpenGL) is imported.

pyrender 0.1.45 renders headless through EGL (Mesa llvmpipe on machines without a GPU) and
still uses `np.infty`, which NumPy 2 removed; both are set up here before the import, lazily,
so that `import occsynth.authoring.render` itself never needs OpenGL (the pre-rendered banks are used
without it).

Coordinates: `render_rgba` takes a camera pose in pyrender's convention (camera looks down
its -z axis, y up). `render_pixel_space` takes meshes whose vertices are already in image
pixels (x right, y down, z away from the viewer) and renders them with an orthographic
camera that maps those pixels 1:1, which is what the 3D face-mask occluder needs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np


class RenderUnavailable(RuntimeError):
    """OpenGL offscreen rendering (EGL) cannot be used on this machine."""


_LOCK = threading.Lock()
_PYRENDER: Any = None
_RENDERER: dict[int, Any] = {}  # pid -> the process's one OffscreenRenderer


def pyrender_module():
    """Import pyrender once with the EGL platform and the NumPy-2 alias it needs."""
    global _PYRENDER
    if _PYRENDER is not None:
        return _PYRENDER
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    if not hasattr(np, "infty"):
        np.infty = np.inf  # pyrender 0.1.45 still uses the alias NumPy 2 removed
    try:
        import pyrender
    except Exception as exc:  # OpenGL/EGL libraries missing or broken
        raise RenderUnavailable(_help(exc)) from exc
    _PYRENDER = pyrender
    return pyrender


def _help(exc: BaseException) -> str:
    return (
        f"offscreen rendering is unavailable ({type(exc).__name__}: {exc}). occsynth renders with "
        "pyrender through EGL: install Mesa's EGL (e.g. apt-get install libegl1 libgl1-mesa-dri) or a "
        "GPU driver, and keep PYOPENGL_PLATFORM=egl. Pre-rendered banks (assets/) work without it."
    )


def get_renderer(width: int, height: int):
    """The process's OffscreenRenderer (one EGL context; forked workers make their own), set to
    this size: EGL framebuffers resize in place, so sizes do not each cost a context."""
    pid = os.getpid()
    with _LOCK:
        renderer = _RENDERER.get(pid)
        if renderer is None:
            pyrender = pyrender_module()
            try:
                renderer = pyrender.OffscreenRenderer(int(width), int(height))
            except Exception as exc:
                raise RenderUnavailable(_help(exc)) from exc
            _RENDERER[pid] = renderer
        renderer.viewport_width, renderer.viewport_height = int(width), int(height)
    return renderer


def render_available() -> bool:
    """True when an offscreen renderer can be created here (used by tests to skip)."""
    try:
        get_renderer(8, 8)
        return True
    except RenderUnavailable:
        return False


@dataclass(frozen=True)
class Light:
    """A directional light shining along `direction` (world coordinates) plus ambient light."""

    direction: tuple[float, float, float] = (-0.3, -0.4, -1.0)
    intensity: float = 3.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.35
    fill: float = 0.8  # a second, weaker light from the opposite side softens shadows


def look_at(eye: Sequence[float], target: Sequence[float] = (0, 0, 0), up: Sequence[float] = (0, 1, 0)) -> np.ndarray:
    """4x4 pose of a camera (or light) at `eye` looking at `target` (pyrender: looks down -z)."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = eye - np.asarray(target, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(np.asarray(up, dtype=np.float64), forward)
    if np.linalg.norm(right) < 1e-9:  # up parallel to the view direction
        right = np.cross(np.array([0.0, 0.0, 1.0]), forward)
    right /= np.linalg.norm(right)
    true_up = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, true_up, forward, eye
    return pose


def _direction_pose(direction: Sequence[float]) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    return look_at(-d / np.linalg.norm(d), (0, 0, 0))


@dataclass
class Part:
    """A mesh with a simple PBR material: what the procedural builders hand to the renderer.

    `texture` (HxWx3 uint8, row 0 at the top) is sampled with `uv` (one (u, v) per vertex, v up);
    `vertex_colors` (Nx3 floats in 0..1) multiply the base colour; `smooth=False` renders
    faceted (hard edges on boxes); `opacity` < 1 marks see-through parts (clear lenses)."""

    mesh: Any
    color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    metallic: float = 0.0
    roughness: float = 0.6
    texture: np.ndarray | None = None
    uv: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None
    smooth: bool = True
    opacity: float = 1.0

    def transformed(self, matrix: np.ndarray) -> Part:
        mesh = self.mesh.copy()
        mesh.apply_transform(matrix)
        return Part(
            mesh,
            self.color,
            self.metallic,
            self.roughness,
            self.texture,
            self.uv,
            self.vertex_colors,
            self.smooth,
            self.opacity,
        )


def to_pyrender_mesh(item: Any):
    """A Part, a trimesh.Trimesh (with its own visuals) or a pyrender.Mesh as a pyrender.Mesh."""
    pyrender = pyrender_module()
    if isinstance(item, pyrender.Mesh):
        return item
    if not isinstance(item, Part):
        return pyrender.Mesh.from_trimesh(item, smooth=True)
    mesh = item.mesh
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    uv, colors = item.uv, item.vertex_colors
    if item.smooth:
        normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
        index = None
    else:  # one vertex per face corner so every face keeps its own normal
        index = faces.reshape(-1)
        vertices = vertices[index]
        normals = np.repeat(np.asarray(mesh.face_normals, dtype=np.float32), 3, axis=0)
        faces = np.arange(len(index)).reshape(-1, 3)
    if uv is not None and index is not None:
        uv = np.asarray(uv)[index]
    if colors is not None and index is not None:
        colors = np.asarray(colors)[index]
    texture = None
    if item.texture is not None:
        texture = pyrender.Texture(source=np.ascontiguousarray(item.texture), source_channels="RGB")
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=[*map(float, item.color), 1.0],
        metallicFactor=float(item.metallic),
        roughnessFactor=float(item.roughness),
        baseColorTexture=texture,
    )
    primitive = pyrender.Primitive(
        positions=vertices,
        normals=normals,
        texcoord_0=None if uv is None or texture is None else np.asarray(uv, dtype=np.float32),
        color_0=None if colors is None else np.asarray(colors, dtype=np.float32),
        indices=faces,
        material=material,
    )
    return pyrender.Mesh([primitive])


def combined_mesh(items: Iterable[Any]):
    """All items as ONE pyrender.Mesh: pyrender draws separate meshes in the order of a set
    (which varies between runs), its primitives in list order; a fixed order keeps renders
    byte-identical where surfaces touch."""
    pyrender = pyrender_module()
    primitives = [prim for item in items for prim in to_pyrender_mesh(item).primitives]
    return pyrender.Mesh(primitives=primitives)


def _add_lights(scene, light: Light) -> None:
    pyrender = pyrender_module()
    scene.add(
        pyrender.DirectionalLight(color=np.asarray(light.color), intensity=light.intensity),
        pose=_direction_pose(light.direction),
    )
    if light.fill > 0:
        d = np.asarray(light.direction, dtype=np.float64)
        fill_dir = np.array([-d[0], d[1] * 0.5, d[2]])
        scene.add(
            pyrender.DirectionalLight(color=np.asarray(light.color), intensity=light.intensity * light.fill * 0.4),
            pose=_direction_pose(fill_dir),
        )


def render_rgba(
    meshes: Any,
    size: tuple[int, int],
    camera_pose: np.ndarray | None = None,
    *,
    xmag: float | None = None,
    yfov: float | None = None,
    light: Light | None = None,
    znear: float = 0.05,
    zfar: float = 100.0,
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Render meshes (or a complete pyrender.Scene) to (RGBA uint8 HxWx4, depth float32 HxW).

    `size` is (width, height). The camera is orthographic with half-width `xmag` (world units)
    unless `yfov` (radians) asks for a perspective one. Alpha is the covered fraction of each
    pixel (rendered at `supersample` x the size and area-averaged), RGB is un-premultiplied.
    Depth is the distance along the view axis (0 = nothing), taken at the centre sample.
    """
    pyrender = pyrender_module()
    width, height = int(size[0]), int(size[1])
    ss = max(1, int(supersample))
    if isinstance(meshes, pyrender.Scene):
        scene = meshes
    else:
        light = light or Light()
        scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.full(3, light.ambient))
        items = meshes if isinstance(meshes, (list, tuple)) else [meshes]
        scene.add(combined_mesh(items))
        if yfov is not None:
            camera = pyrender.PerspectiveCamera(yfov=yfov, aspectRatio=width / height, znear=znear, zfar=zfar)
        else:
            xm = float(xmag if xmag is not None else 1.0)
            camera = pyrender.OrthographicCamera(xmag=xm, ymag=xm * height / width, znear=znear, zfar=zfar)
        scene.add(camera, pose=np.eye(4) if camera_pose is None else camera_pose)
        _add_lights(scene, light)
    renderer = get_renderer(width * ss, height * ss)
    flags = pyrender.RenderFlags.RGBA | pyrender.RenderFlags.SKIP_CULL_FACES
    color, depth = renderer.render(scene, flags=flags)
    depth = _metric_depth(scene, depth)
    return _downsample(color, ss), np.ascontiguousarray(depth[ss // 2 :: ss, ss // 2 :: ss], dtype=np.float32)


def render_depth(scene, size: tuple[int, int], supersample: int = 2) -> np.ndarray:
    """Depth only (float32, 0 = nothing) of a complete scene at `supersample` x `size`."""
    pyrender = pyrender_module()
    ss = max(1, int(supersample))
    renderer = get_renderer(int(size[0]) * ss, int(size[1]) * ss)
    depth = renderer.render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY | pyrender.RenderFlags.SKIP_CULL_FACES)
    return _metric_depth(scene, depth)


def _metric_depth(scene, depth: np.ndarray) -> np.ndarray:
    """pyrender linearises depth with the perspective formula even for orthographic cameras;
    undo that so orthographic depth is the true distance from the camera plane."""
    pyrender = pyrender_module()
    camera = scene.main_camera_node.camera
    if not isinstance(camera, pyrender.OrthographicCamera):
        return depth
    zn, zf = camera.znear, camera.zfar
    out = np.zeros_like(depth)
    hit = depth > 0
    ndc = (zf + zn - 2.0 * zn * zf / depth[hit]) / (zf - zn)
    out[hit] = zn + (ndc + 1.0) * 0.5 * (zf - zn)
    return out


def _downsample(color: np.ndarray, ss: int) -> np.ndarray:
    """Area-average an RGBA render (pyrender's RGB is premultiplied by coverage) and un-premultiply."""
    rgba = color.astype(np.float32)
    if ss > 1:
        h, w = rgba.shape[0] // ss, rgba.shape[1] // ss
        rgba = rgba[: h * ss, : w * ss].reshape(h, ss, w, ss, 4).mean(axis=(1, 3))
    alpha = rgba[..., 3:4]
    rgb = np.where(alpha > 0, rgba[..., :3] * 255.0 / np.maximum(alpha, 1e-6), 0.0)
    out = np.concatenate([np.clip(rgb, 0, 255), alpha], axis=-1)
    return np.round(out).astype(np.uint8)


def pixel_space_pose(width: int, height: int) -> np.ndarray:
    """Node pose mapping image-pixel coordinates (x right, y down, z away from the viewer) into
    the world of `pixel_space_camera` (a 180-degree turn about x: y and z flip, handedness kept)."""
    pose = np.diag([1.0, -1.0, -1.0, 1.0])
    pose[1, 3] = float(height)
    return pose


def render_pixel_space(
    meshes: Iterable[Any],
    width: int,
    height: int,
    *,
    occluders: Iterable[Any] = (),
    light: Light | None = None,
    supersample: int = 2,
    depth_range: float = 2000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render meshes given in image pixels to (RGBA uint8 HxWx4, depth float32 HxW, 0 = nothing).

    `occluders` are meshes that hide what lies behind them but are not drawn themselves (a head
    proxy hiding the far ear loop): their depth is rendered separately and every sample where
    they are nearer than the drawn meshes becomes transparent.
    """
    pyrender = pyrender_module()
    light = light or Light(direction=(-0.2, -0.3, -1.0))
    ss = max(1, int(supersample))
    node_pose = pixel_space_pose(width, height)

    def scene_of(items):
        scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.full(3, light.ambient))
        scene.add(combined_mesh(items), pose=node_pose)
        camera = pyrender.OrthographicCamera(xmag=width / 2.0, ymag=height / 2.0, znear=1.0, zfar=2.0 * depth_range)
        cam_pose = np.eye(4)
        cam_pose[:3, 3] = [width / 2.0, height / 2.0, depth_range]
        scene.add(camera, pose=cam_pose)
        return scene

    scene = scene_of(list(meshes))
    _add_lights(scene, light)
    renderer = get_renderer(width * ss, height * ss)
    flags = pyrender.RenderFlags.RGBA | pyrender.RenderFlags.SKIP_CULL_FACES
    color, depth = renderer.render(scene, flags=flags)
    depth = _metric_depth(scene, depth)
    occluders = list(occluders)
    if occluders:
        hidden_depth = render_depth(scene_of(occluders), (width, height), supersample=ss)
        hidden = (hidden_depth > 0) & ((depth == 0) | (hidden_depth < depth))
        color = color.copy()
        color[hidden] = 0
        depth = np.where(hidden, 0.0, depth)
    return _downsample(color, ss), np.ascontiguousarray(depth[ss // 2 :: ss, ss // 2 :: ss], dtype=np.float32)
