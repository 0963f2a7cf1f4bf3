"""Stage 3: reference image synthesis (the "scaffold").

Subject edits: the edited object is cut from the best target frame and
centred on a white canvas, the reference-image convention of reference §4.5/5.1
(white canvas, centred, fit + pad). Which pixels of the edited region are
the object, not background the edit revealed or covered, is decided by a
colour model of the unchanged ring around the region: region pixels whose
colour also occurs in the ring are background. The best frame is the one
whose largest object piece is biggest, penalised when it touches the frame
border (possibly cut off) or is split (possibly occluded).

Background edits: the target's background with the subject removed. The
plate starts from the frame where the most background is visible; holes
(the preserved subject) are filled from other frames where the background
there is visible (objects move; skipped when the background itself moves),
then by the cleaner: the default copies the nearest visible background
pixel; a generative cleaner (an inpainting model, or Kiwi's own image-edit
mode asked to "remove the subject") plugs in as
`cleaner(image, holes, prompt) -> image`.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from kiwi_jax.refvie import grounding as grounding_lib
from kiwi_jax.refvie.grounding import Grounding
from kiwi_jax.refvie.types import Pair, Rejected

Cleaner = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
  """How scaffolds are cut and laid out.

  Attributes:
    canvas_size: side of the square subject canvas; None keeps the object at
      its native resolution (no resampling) on a canvas of side
      ceil(longest side / fill).
    fill: fraction of the canvas the object's longest side spans.
    ring_gap, ring_radius: the unchanged ring giving the background colour
      model starts `ring_gap` px outside the edited region and is
      `ring_radius` px wide.
    colour_bins: quantisation levels per channel of that model.
    min_ring_fraction: a colour bin counts as background when it holds at
      least this fraction of the ring's pixels.
    min_subject_pixels: smallest object piece worth a reference.
    max_candidate_frames: frames (evenly spread) searched for the best view
      of the subject.
    min_background_fraction: least visible background in the best frame.
    max_background_motion: mean |difference| (0-255) between visible
      background in two frames above which temporal filling is skipped.
    rim_radius: background pixels this close to the preserved subject are
      not trusted (filled like holes).
  """

  canvas_size: int | None = None
  fill: float = 0.8
  ring_gap: int = 2
  ring_radius: int = 3
  colour_bins: int = 16
  min_ring_fraction: float = 0.002
  min_subject_pixels: int = 16
  max_candidate_frames: int = 16
  min_background_fraction: float = 0.2
  max_background_motion: float = 4.0
  rim_radius: int = 1


@dataclasses.dataclass(frozen=True)
class Scaffold:
  """A synthesised reference image.

  Attributes:
    image: uint8[h, w, 3].
    alpha: bool[h, w], the pixels that show the subject or background (False
      on the white padding and on filled holes).
    frame: the target frame it was taken from.
    region: bool[H, W], the pixels of that frame it shows.
    scores: measurements.
  """

  image: np.ndarray
  alpha: np.ndarray
  frame: int
  region: np.ndarray
  scores: dict[str, float]


def nearest_fill(
  image: np.ndarray, holes: np.ndarray, prompt: str
) -> np.ndarray:
  """Default cleaner: each hole pixel copies the nearest non-hole pixel."""
  del prompt
  if not holes.any():
    return image
  _, (iy, ix) = ndimage.distance_transform_edt(holes, return_indices=True)
  return image[iy, ix]


def _background_colours(target, mask, cfg) -> np.ndarray:
  """bool[B, B, B]: colour bins (dilated by one) seen in the unchanged ring."""
  # The ring starts `ring_gap` px away: object pixels the mask missed at
  # its rim must not enter the background model.
  near = ndimage.binary_dilation(mask, grounding_lib.disk(cfg.ring_gap))
  ring = (
    ndimage.binary_dilation(near, grounding_lib.disk(cfg.ring_radius)) & ~near
  )
  bins = cfg.colour_bins
  q = (target[ring].astype(np.int32) * bins) // 256
  counts = np.zeros((bins,) * 3, np.int64)
  np.add.at(counts, (q[:, 0], q[:, 1], q[:, 2]), 1)
  present = counts >= max(1, cfg.min_ring_fraction * ring.sum())
  return ndimage.binary_dilation(present, np.ones((3, 3, 3), bool))


def subject_pixels(
  target: np.ndarray, mask: np.ndarray, cfg: SynthesisConfig
) -> np.ndarray:
  """bool[T, H, W]: the edited region's pixels that show the new subject."""
  out = np.zeros_like(mask)
  if not mask.any():
    return out
  # Work inside the region's box grown by the ring (local edits are small).
  ((y0, x0, y1, x1),) = grounding_lib.boxes_of(mask.any(0, keepdims=True))
  m = cfg.ring_gap + cfg.ring_radius + 1
  h, w = mask.shape[1:]
  y0, x0 = max(0, y0 - m), max(0, x0 - m)
  y1, x1 = min(h, y1 + m), min(w, x1 + m)
  out[:, y0:y1, x0:x1] = _subject_pixels(
    target[:, y0:y1, x0:x1], mask[:, y0:y1, x0:x1], cfg
  )
  return out


def _subject_pixels(target, mask, cfg):
  present = _background_colours(target, mask, cfg)
  q = (target.astype(np.int32) * cfg.colour_bins) // 256
  background_like = present[q[..., 0], q[..., 1], q[..., 2]]
  subject = mask & ~background_like
  subject = ndimage.binary_opening(subject, grounding_lib.disk(1))
  return np.stack([ndimage.binary_fill_holes(f) for f in subject])


def _best_piece(subject: np.ndarray) -> tuple[int, np.ndarray, float]:
  """(frame, bool[H, W] largest piece there, score) maximising the score."""
  t_count, h, w = subject.shape
  best = (-1, None, 0.0)
  middle = (t_count - 1) / 2
  for t in sorted(range(t_count), key=lambda i: (abs(i - middle), i)):
    labels, count = ndimage.label(subject[t])
    if count == 0:
      continue
    sizes = np.bincount(labels.ravel())[1:]
    piece = labels == (1 + int(sizes.argmax()))
    score = float(sizes.max()) * sizes.max() / sizes.sum()
    if (
      piece[0].any()
      or piece[-1].any()
      or piece[:, 0].any()
      or (piece[:, -1].any())
    ):
      score *= 0.5
    if score > best[2]:
      best = (t, piece, score)
  return best


def place_on_canvas(
  crop: np.ndarray, alpha: np.ndarray, cfg: SynthesisConfig
) -> tuple[np.ndarray, np.ndarray]:
  """Centres an object crop on a white square canvas (fit + pad).

  The reference-image convention (reference §4.5/5.1: white canvas, centred,
  aspect kept); the object's longest side spans `fill` of the canvas.

  Returns:
    (uint8[S, S, 3] image, bool[S, S] alpha).
  """
  rgb = np.where(alpha[..., None], crop, 255).astype(np.uint8)
  h, w = alpha.shape
  if cfg.canvas_size is None:
    side = int(np.ceil(max(h, w) / cfg.fill))
    image = np.full((side, side, 3), 255, np.uint8)
    out_alpha = np.zeros((side, side), bool)
    y, x = (side - h) // 2, (side - w) // 2
    image[y : y + h, x : x + w] = rgb
    out_alpha[y : y + h, x : x + w] = alpha
    return image, out_alpha
  side = cfg.canvas_size
  scale = cfg.fill * side / max(h, w)
  new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
  # Colour and matte are resized apart, then composited on white: the
  # object's colour is first spread into the background (nearest fill) so
  # neither white nor the old background bleeds into its rim, and the
  # padding stays exactly white.
  spread = nearest_fill(np.asarray(crop, np.uint8), ~alpha, "")
  colour = np.asarray(
    Image.fromarray(spread).resize((new_w, new_h), Image.Resampling.BICUBIC),
    np.float32,
  )
  matte = np.asarray(
    Image.fromarray(alpha.astype(np.float32)).resize(
      (new_w, new_h), Image.Resampling.BILINEAR
    ),
    np.float32,
  )[..., None]
  matte = np.clip(matte, 0.0, 1.0)
  image = np.full((side, side, 3), 255, np.uint8)
  out_alpha = np.zeros((side, side), bool)
  y, x = (side - new_h) // 2, (side - new_w) // 2
  image[y : y + new_h, x : x + new_w] = (
    np.round(matte * colour + (1 - matte) * 255.0).clip(0, 255).astype(np.uint8)
  )
  out_alpha[y : y + new_h, x : x + new_w] = matte[..., 0] >= 0.5
  return image, out_alpha


def cut_subject(
  frame: np.ndarray, piece: np.ndarray, cfg: SynthesisConfig
) -> tuple[np.ndarray, np.ndarray]:
  """The scaffold of the object `piece` (bool[H, W]) in `frame`."""
  ((y0, x0, y1, x1),) = grounding_lib.boxes_of(piece[None])
  return place_on_canvas(frame[y0:y1, x0:x1], piece[y0:y1, x0:x1], cfg)


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """bool[h, w] -> bool[height, width] (bilinear, then >= 0.5)."""
  image = Image.fromarray(mask.astype(np.float32))
  resized = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(resized) >= 0.5


@dataclasses.dataclass(frozen=True)
class ReferenceSynthesizer:
  """Builds the scaffold of a grounded pair (see the module docstring)."""

  config: SynthesisConfig = SynthesisConfig()
  cleaner: Cleaner = nearest_fill

  def __call__(self, pair: Pair, grounding: Grounding) -> Scaffold:
    if grounding.kind == "subject":
      return self.subject(pair, grounding)
    return self.background(pair, grounding)

  def subject(self, pair: Pair, grounding: Grounding) -> Scaffold:
    cfg = self.config
    count = len(pair.target)
    frames = np.unique(
      np.linspace(0, count - 1, min(count, cfg.max_candidate_frames))
      .round()
      .astype(int)
    )
    subject = np.zeros_like(grounding.mask)
    subject[frames] = subject_pixels(
      pair.target[frames], grounding.mask[frames], cfg
    )
    if not subject.any():
      raise Rejected(
        "no_subject_in_target",
        "every changed pixel of the "
        "target looks like the surrounding background",
      )
    frame, piece, score = _best_piece(subject)
    area = int(piece.sum())
    scores = {"subject_pixels": area, "best_frame_score": score}
    if area < cfg.min_subject_pixels:
      raise Rejected(
        "subject_too_small",
        f"largest subject piece has {area} px (< {cfg.min_subject_pixels})",
        scores,
      )
    image, alpha = cut_subject(pair.target[frame], piece, cfg)
    return Scaffold(image, alpha, frame, piece, scores)

  def at_resolution(
    self, scaffold: Scaffold, kind: str, frame: np.ndarray
  ) -> Scaffold:
    """Re-cuts a subject scaffold found on a downscaled copy from the
    full-resolution target frame (uint8[H, W, 3]); background plates are
    kept at the analysis resolution."""
    if kind != "subject":
      return scaffold
    # The upsampled region is blocky at the object's rim: grow it a little
    # and let the background colour model trim it at full resolution.
    scale = frame.shape[0] / scaffold.region.shape[0]
    region = upsample_mask(scaffold.region, *frame.shape[:2])
    grown = ndimage.binary_dilation(
      region, grounding_lib.disk(max(1, round(scale)))[0]
    )
    refined = subject_pixels(frame[None], grown[None], self.config)[0]
    labels, count = ndimage.label(refined)
    if count:
      sizes = np.bincount(labels.ravel())[1:]
      region = labels == 1 + int(sizes.argmax())
    image, alpha = cut_subject(frame, region, self.config)
    return dataclasses.replace(scaffold, image=image, alpha=alpha)

  def background(self, pair: Pair, grounding: Grounding) -> Scaffold:
    cfg = self.config
    target = pair.target
    # Trust background pixels a pixel away from the preserved subject: the
    # mask's rim (closing) may hold a few subject pixels.
    mask = (
      ndimage.binary_erosion(
        grounding.mask, grounding_lib.disk(cfg.rim_radius), border_value=1
      )
      if cfg.rim_radius
      else grounding.mask
    )
    visible = mask.mean(axis=(1, 2))
    middle = (len(visible) - 1) / 2
    frame = max(
      range(len(visible)), key=lambda t: (visible[t], -abs(t - middle), -t)
    )
    scores = {"visible_background": visible[frame]}
    if visible[frame] < cfg.min_background_fraction:
      raise Rejected(
        "no_background_visible",
        f"at most {visible[frame]:.1%} of a frame shows the new background",
        scores,
      )
    plate = target[frame].copy()
    valid = mask[frame].copy()
    filled_from_time = 0
    for t in sorted(range(len(visible)), key=lambda i: (abs(i - frame), i)):
      both = valid & mask[t]
      if t == frame or not both.any():
        continue
      motion = np.abs(plate[both].astype(np.float32) - target[t][both]).mean()
      if motion > cfg.max_background_motion:
        continue
      take = ~valid & mask[t]
      plate[take] = target[t][take]
      valid |= take
      filled_from_time += int(take.sum())
    holes = ~valid
    scores.update(
      temporal_fill_pixels=filled_from_time, cleaned_pixels=int(holes.sum())
    )
    plate = self.cleaner(plate, holes, pair.prompt)
    return Scaffold(plate, valid, frame, mask[frame], scores)
