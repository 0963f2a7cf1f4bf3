"""Tiny benchmark files and fake editors for the evaluator tests."""

import os

import numpy as np
import yaml
from PIL import Image

from kiwi_jax.evaluators import video_io

FRAMES, HEIGHT, WIDTH = 5, 32, 48
SHIFT = 40  # the colour-shift editor's offset on the red channel


def moving_clip(
  seed: int, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH
) -> np.ndarray:
  """A smooth clip with motion: a gradient sliding one step per frame."""
  rng = np.random.default_rng(seed)
  base = rng.integers(40, 200, size=3)
  y, x = np.mgrid[0:height, 0:width]
  clip = []
  for t in range(frames):
    ramp = ((x + 3 * t) % width) * (80 / width) + y * (40 / height)
    clip.append(base[None, None, :] + ramp[..., None])
  return np.clip(np.stack(clip), 0, 255).astype(np.uint8)


def colour_shift(frames: np.ndarray) -> np.ndarray:
  out = frames.astype(np.int64)
  out[..., 0] += SHIFT
  return np.clip(out, 0, 255).astype(np.uint8)


def make_refvie_mini(
  root: str, count: int = 4, with_targets: bool = True
) -> str:
  """Writes a RefVIE-mini benchmark under root; returns the YAML path."""
  items = []
  for i in range(count):
    src = f"videos/src_{i}.mp4"
    clip = moving_clip(i)
    video_io.write_video(os.path.join(root, src), clip)
    ref = f"refs/ref_{i}.png"
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    Image.fromarray(clip[0]).save(os.path.join(root, ref))
    item = {
      "src_video": src,
      "instruction": f"Replace item number {i}",
      "ref_img": ref,
      "edit_type": ("subject", "background")[i % 2],
    }
    if with_targets:
      item["tgt_video"] = f"videos/tgt_{i}.mp4"
      video_io.write_video(
        os.path.join(root, item["tgt_video"]), colour_shift(clip)
      )
    items.append(item)
  path = os.path.join(root, "refvie_mini.yaml")
  with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump(items, f)
  return path


def colour_shift_editor(checkpoint_dir=None):
  """`eval.py run --editor eval_fakes:colour_shift_editor` factory."""
  del checkpoint_dir

  def edit(item):
    return colour_shift(video_io.read_video(item.source_video))

  return edit


class CountingEditor:
  """Identity editor that records calls and can fail on the n-th one."""

  def __init__(self, fail_on_call: int | None = None):
    self.calls = []
    self.fail_on_call = fail_on_call

  def __call__(self, item):
    self.calls.append(item.output_name)
    if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
      raise KeyboardInterrupt("simulated interruption")
    return video_io.read_video(item.source_video)
