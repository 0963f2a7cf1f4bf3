"""Exact rendering of RefVIE-mini scenes: moving shapes on textured backgrounds.

A scene is a background texture plus objects (shape, colour, size, linear
motion that bounces off the borders). Rendering first paints an integer label
map per frame (0 = background, i = the i-th object, later objects on top),
then looks colours up, so every pixel's owner is known exactly and the true
edited region of an edit is a label comparison, not an estimate.

Object colours and texture colours come from disjoint palettes, and the
objects of one scene have distinct colours, so "pixels that differ between
source and target" equals "pixels whose owner or owner colour changed".
"""

import dataclasses

import numpy as np

# Saturated colours for objects (never white: reference images use a white
# canvas; never close to the muted texture colours below).
OBJECT_COLORS = {
  "red": (220, 30, 30),
  "green": (30, 200, 40),
  "blue": (30, 60, 230),
  "yellow": (240, 220, 20),
  "magenta": (230, 30, 200),
  "cyan": (20, 220, 230),
  "orange": (250, 130, 10),
  "black": (5, 5, 5),
}
# Muted colours for textures.
TEXTURE_COLORS = {
  "gray": (128, 128, 128),
  "beige": (200, 180, 150),
  "teal": (70, 120, 120),
  "brown": (120, 80, 50),
  "lavender": (170, 160, 200),
  "olive": (120, 130, 70),
  "navy": (50, 60, 100),
  "pink": (210, 160, 170),
}
SHAPES = ("circle", "square", "triangle", "diamond")
TEXTURES = ("striped", "checkered", "dotted", "wavy")
# One colour (RefVIE-mini's "simple" scenes): ``colors`` holds it twice.
SOLID = "solid"


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """A moving shape; position in pixels, `size` its half-extent."""

  shape: str
  color: str
  size: float
  start: tuple[float, float]  # (y, x) of the centre at frame 0
  velocity: tuple[float, float]  # pixels per frame

  def center(self, t: int, height: int, width: int) -> tuple[float, float]:
    """Centre at frame t, reflecting off the borders (a triangle wave)."""
    return (
      _bounce(
        self.start[0] + t * self.velocity[0], self.size, height - self.size
      ),
      _bounce(
        self.start[1] + t * self.velocity[1], self.size, width - self.size
      ),
    )

  @property
  def description(self) -> str:
    return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Texture:
  """A two-colour pattern, scrolling `scroll` pixels per frame along x."""

  kind: str
  colors: tuple[str, str]
  period: int
  scroll: int

  @property
  def description(self) -> str:
    if self.kind == SOLID:
      return self.colors[0]
    return f"{self.colors[0]} and {self.colors[1]} {self.kind}"


@dataclasses.dataclass(frozen=True)
class Scene:
  texture: Texture
  objects: tuple[SceneObject, ...]


def _bounce(value: float, low: float, high: float) -> float:
  if high <= low:
    return (low + high) / 2
  span = high - low
  phase = (value - low) % (2 * span)
  return low + (phase if phase <= span else 2 * span - phase)


def shape_mask(
  shape: str,
  center: tuple[float, float],
  size: float,
  height: int,
  width: int,
) -> np.ndarray:
  """bool[height, width]: pixels whose centres fall inside the shape."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
  dy, dx = yy - center[0], xx - center[1]
  if shape == "circle":
    return dy * dy + dx * dx <= size * size
  if shape == "square":
    side = 0.85 * size
    return (np.abs(dy) <= side) & (np.abs(dx) <= side)
  if shape == "diamond":
    return np.abs(dy) + np.abs(dx) <= 1.2 * size
  if shape == "triangle":
    # Apex up: rows from centre - size to centre + 0.8 size, widening down.
    depth = dy + size
    return (depth >= 0) & (depth <= 1.8 * size) & (np.abs(dx) <= 0.6 * depth)
  raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_texture(
  texture: Texture, height: int, width: int, t: int = 0
) -> np.ndarray:
  """uint8[height, width, 3] texture at frame t."""
  yy, xx = np.mgrid[0:height, 0:width]
  xx = xx + t * texture.scroll
  p = texture.period
  if texture.kind == SOLID:
    first = np.ones((height, width), bool)
  elif texture.kind == "striped":
    first = (xx // p) % 2 == 0
  elif texture.kind == "checkered":
    first = (yy // p + xx // p) % 2 == 0
  elif texture.kind == "dotted":
    first = ((yy % p) - p / 2) ** 2 + ((xx % p) - p / 2) ** 2 > (p / 3) ** 2
  elif texture.kind == "wavy":
    wave = np.round(2 * np.sin(xx * np.pi / p))
    first = ((yy + wave) // p) % 2 == 0
  else:
    raise ValueError(f"unknown texture {texture.kind!r}; expected {TEXTURES}")
  c0 = np.array(TEXTURE_COLORS[texture.colors[0]], np.uint8)
  c1 = np.array(TEXTURE_COLORS[texture.colors[1]], np.uint8)
  return np.where(first[..., None], c0, c1)


def label_maps(
  objects: tuple[SceneObject, ...], num_frames: int, height: int, width: int
) -> np.ndarray:
  """int32[T, H, W]: 0 for background, i + 1 for objects[i] (last on top)."""
  labels = np.zeros((num_frames, height, width), np.int32)
  for t in range(num_frames):
    for i, obj in enumerate(objects):
      mask = shape_mask(
        obj.shape, obj.center(t, height, width), obj.size, height, width
      )
      labels[t][mask] = i + 1
  return labels


def render(
  scene: Scene, num_frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
  """Renders a scene.

  Returns:
    frames: uint8[T, H, W, 3].
    labels: int32[T, H, W], see `label_maps`.
  """
  labels = label_maps(scene.objects, num_frames, height, width)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    frame = render_texture(scene.texture, height, width, t)
    for i, obj in enumerate(scene.objects):
      frame[labels[t] == i + 1] = OBJECT_COLORS[obj.color]
    frames[t] = frame
  return frames, labels


def render_object_on_white(obj: SceneObject, size: int) -> np.ndarray:
  """uint8[size, size, 3]: the object alone, centred on a white canvas."""
  scale = 0.8 * size / (2 * obj.size)
  mask = shape_mask(
    obj.shape, (size / 2, size / 2), obj.size * scale, size, size
  )
  image = np.full((size, size, 3), 255, np.uint8)
  image[mask] = OBJECT_COLORS[obj.color]
  return image
