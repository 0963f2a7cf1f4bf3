"""Caption clips: what the CPU demo's pretrained tiny base learns from.

Kiwi-Edit starts from a pretrained Wan (a text-to-video model) and a
pretrained Qwen2.5-VL. The CPU demo's stand-ins for them are pretrained by
this project (``kiwi_jax.tasks.demo_base``) on these clips: RefVIE-mini
"simple" scenes described by a caption, drawn from a flat grey layout.

* ``target``: the scene in colour (one-colour background, one to three
  moving objects).
* ``source``: its layout, every object a flat light grey on a dark grey
  background, so colours can only come from the caption. An object placed
  beside another one is left out of the layout half of the time, so the
  caption's sides ("below the blue square") are needed to draw it.
* ``prompt``: the caption, e.g. "A red circle and a black diamond below
  the blue square and a blue square on a teal background."

The clips use the same ``EditSample`` record and the same CSV + media
layout as the edit clips (``refvie_mini.write_dataset(make=...)``), so
the trainer reads them through the ordinary Kiwi data pipeline. The
edit type is ``"caption"``; the mask covers the whole clip.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kiwi_jax.data import mini_scene as ms
from kiwi_jax.data import refvie_mini

CAPTION = "caption"
# The layout's two greys (uint8 RGB), far from every scene colour's role.
LAYOUT_OBJECT = (176, 176, 176)
LAYOUT_BACKGROUND = (72, 72, 72)
# The share of scenes with an object placed beside another, and the share
# of those whose layout leaves it out.
BESIDE_SHARE = 0.5
HIDDEN_SHARE = 0.5
CAPTION_WORDS = "A a and on background."


def caption(
  texture: ms.Texture,
  objects: list[ms.SceneObject],
  sides: dict[int, tuple[str, int]],
) -> str:
  """The scene's caption.

  Args:
    texture: the (solid) background.
    objects: the scene's objects, in drawing order.
    sides: ``{i: (side, j)}`` for objects placed beside object ``j``.
  """
  parts = []
  for i, obj in enumerate(objects):
    text = f"a {obj.description}"
    if i in sides:
      side, anchor = sides[i]
      text += f" {side} the {objects[anchor].description}"
    parts.append(text)
  listed = parts[0] if len(parts) == 1 else " and ".join(parts)
  text = f"{listed} on a {texture.description} background."
  return text[0].upper() + text[1:]


def layout(labels: np.ndarray, shown: np.ndarray) -> np.ndarray:
  """uint8[T, H, W, 3]: the objects whose index is in ``shown`` light grey
  on dark grey (``labels`` as ``mini_scene.label_maps``)."""
  visible = np.isin(labels, shown + 1)
  frames = np.empty(labels.shape + (3,), np.uint8)
  frames[...] = np.array(LAYOUT_BACKGROUND, np.uint8)
  frames[visible] = np.array(LAYOUT_OBJECT, np.uint8)
  return frames


def make_caption_sample(
  seed: int,
  index: int,
  cfg: refvie_mini.MiniConfig = refvie_mini.MiniConfig(scene="simple"),
  edit_type: str | None = None,
  key_prefix: str = "c",
) -> refvie_mini.EditSample:
  """Caption clip ``index`` of the stream ``seed`` (the signature of
  ``refvie_mini.make_sample``; ``edit_type`` must be None or "caption")."""
  if edit_type not in (None, CAPTION):
    raise ValueError(
      f"caption clips have edit type {CAPTION!r}, not {edit_type!r}"
    )
  if cfg.scene != "simple":
    raise ValueError("caption clips are drawn from simple scenes")
  rng = np.random.default_rng([seed, index, 1 + len(refvie_mini.EDIT_TYPES)])
  colors = [str(c) for c in rng.permutation(list(ms.OBJECT_COLORS))]
  count = int(rng.integers(1, cfg.max_objects + 1))
  objects = [
    refvie_mini._simple_object(rng, cfg, colors[i]) for i in range(count)
  ]
  texture = refvie_mini._random_texture(rng, simple=True)
  sides: dict[int, tuple[str, int]] = {}
  hidden = []
  if rng.random() < BESIDE_SHARE:
    anchor = int(rng.integers(count))
    placed = refvie_mini._beside(rng, cfg, objects[anchor], colors[count])
    if placed is not None:
      sides[len(objects)] = (placed[1], anchor)
      objects.append(placed[0])
      if rng.random() < HIDDEN_SHARE:
        hidden.append(len(objects) - 1)
  order = [int(i) for i in rng.permutation(len(objects))]
  objects = [objects[i] for i in order]
  new_index = {old: new for new, old in enumerate(order)}
  sides = {new_index[i]: (s, new_index[j]) for i, (s, j) in sides.items()}
  hidden = [new_index[i] for i in hidden]
  t, h, w = cfg.num_frames, cfg.height, cfg.width
  target, labels = ms.render(ms.Scene(texture, tuple(objects)), t, h, w)
  shown = np.array([i for i in range(len(objects)) if i not in hidden])
  return refvie_mini.EditSample(
    key=f"{key_prefix}{index:06d}",
    edit_type=CAPTION,
    prompt=caption(texture, objects, sides),
    source=layout(labels, shown),
    target=target,
    ref_image=None,
    mask=np.ones((t, h, w), bool),
    subject="",
  )


def write_caption_dataset(
  out_dir,
  *,
  num_videos: int,
  num_images: int = 0,
  seed: int = 0,
  cfg: refvie_mini.MiniConfig = refvie_mini.MiniConfig(scene="simple"),
):
  """Caption clips in RefVIE-mini's CSV + media layout (``video`` and
  ``image`` CSVs; see ``refvie_mini.write_dataset``)."""
  return refvie_mini.write_dataset(
    out_dir,
    num_videos=num_videos,
    num_images=num_images,
    seed=seed,
    cfg=dataclasses.replace(cfg, scene="simple"),
    make=make_caption_sample,
  )
