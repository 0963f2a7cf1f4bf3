"""One pair through stages 1-4 (global de-duplication aside).

`Pipeline` bundles the stages (each with its default or a learned model in
its slot) and the run options; `Pipeline.process` is the unit of work both
drivers distribute. It is a pure function of the row, the input files and
the pipeline, and its only side effect is writing the accepted pair's media
under the output directory (atomically, under names derived from the key),
so re-running it (a resumed run, a retried Beam bundle) is harmless.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from kiwi_jax.data.metadata import Row
from kiwi_jax.media import video_io
from kiwi_jax.refvie import dedup as dedup_lib
from kiwi_jax.refvie import records
from kiwi_jax.refvie.grounding import DiffGrounder, Grounding
from kiwi_jax.refvie.quality import QualityFilter
from kiwi_jax.refvie.records import Outcome
from kiwi_jax.refvie.synthesis import ReferenceSynthesizer
from kiwi_jax.refvie.types import Pair, Rejected, prefixed
from kiwi_jax.refvie.verification import Verifier
from kiwi_jax.utils import atomic

MEDIA_MODES = ("copy", "reference")


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """The four stages and the run options.

  Attributes:
    quality, grounder, synthesizer, verifier: the stages (see their modules
      for the learned-model slots).
    dedup: de-duplication settings (applied over the whole set by the
      drivers, not here).
    max_frames: frames decoded per video (training reads the first 81 at
      most, reference §6.3).
    analysis_max_side: the stages look at copies whose longer side is at
      most this (area downscaling; None: full size), which bounds memory and
      time per pair; subject scaffolds are then re-cut from the
      full-resolution target.
    media: "copy" writes the accepted pairs' source and target under
      media/{src,tgt}/ so the output stands alone; "reference" lists their
      original paths (absolute) instead.
  """

  quality: QualityFilter = QualityFilter()
  grounder: Callable[[Pair], Grounding] = DiffGrounder()
  synthesizer: ReferenceSynthesizer = ReferenceSynthesizer()
  verifier: Verifier = Verifier()
  dedup: dedup_lib.DedupConfig = dedup_lib.DedupConfig()
  max_frames: int = 81
  analysis_max_side: int | None = 512
  media: str = "copy"

  def __post_init__(self):
    if self.media not in MEDIA_MODES:
      raise ValueError(
        f"media must be one of {MEDIA_MODES}, got {self.media!r}"
      )

  def fingerprint(self) -> Any:
    """A JSON-able description that is stable across processes (used to
    refuse resuming an output directory with a different pipeline)."""
    return _describe(self)

  def process(
    self, row: Row, base_dir: str | epath.Path, out_dir: str | epath.Path
  ) -> Outcome:
    """Runs stages 1-4 on one row; never raises for bad data.

    Rows with inline media (`Row.src_bytes`/`tgt_bytes`, ArrayRecord input)
    are decoded from memory; they need media="copy" (they have no path to
    reference), else ValueError.
    """
    if row.has_inline_media and self.media != "copy":
      raise ValueError(
        f"{row.origin}: media={self.media!r} lists original "
        "paths, but this row carries its media inline; use "
        "media='copy'"
      )
    base_dir, out_dir = epath.Path(base_dir), epath.Path(out_dir)
    outcome = Outcome(
      key=row.key,
      origin=row.origin,
      prompt=row.prompt,
      src_video=row.src_video,
      tgt_video=row.tgt_video,
    )
    stage = "input"
    try:
      full, data = _load(row, base_dir, self.max_frames)
      pair = downscale(full, self.analysis_max_side)
      stage = "quality"
      outcome.scores.update(prefixed(stage, self.quality(pair)))
      stage = "grounding"
      grounding = self.grounder(pair)
      outcome.edit_kind = grounding.kind
      outcome.boxes = [list(b) if b else None for b in grounding.boxes]
      outcome.scores.update(prefixed(stage, grounding.scores))
      stage = "synthesis"
      scaffold = self.synthesizer(pair, grounding)
      if pair is not full:
        scaffold = self.synthesizer.at_resolution(
          scaffold, grounding.kind, full.target[scaffold.frame]
        )
      outcome.best_frame = scaffold.frame
      outcome.scores.update(prefixed(stage, scaffold.scores))
      stage = "verification"
      checks = self.verifier(pair, grounding, scaffold)
      outcome.scores.update(prefixed(stage, checks))
    except Rejected as e:
      outcome.scores.update(prefixed(stage, e.scores))
      if e.boxes is not None:
        outcome.boxes = [list(b) if b else None for b in e.boxes]
      outcome.stage, outcome.reason, outcome.detail = stage, e.reason, e.detail
      return outcome
    outcome.status = "accepted"
    outcome.signature = dedup_lib.signature(pair.source, pair.target)
    outcome.priority = outcome.scores["verification.margin"]
    name = records.safe_name(row.key)
    outcome.ref_image = f"media/ref/{name}.png"
    atomic.write_bytes(
      out_dir / outcome.ref_image, video_io.encode_png(scaffold.image)
    )
    for column, relative, (payload, ext) in (
      ("src_video", row.src_video, data[0]),
      ("tgt_video", row.tgt_video, data[1]),
    ):
      if self.media == "copy":
        sub = "src" if column == "src_video" else "tgt"
        path = f"media/{sub}/{name}{ext}"
        atomic.write_bytes(out_dir / path, payload)
      else:
        path = str(base_dir / relative)
      setattr(outcome, column, path)
    return outcome


def downscale(pair: Pair, max_side: int | None) -> Pair:
  """An analysis copy of `pair` with longer side <= max_side (area filter).

  Returns `pair` itself when it is small enough, or when source and target
  differ in size (the quality stage rejects those from `media_shapes`).
  """
  _, h, w, _ = pair.source.shape
  if (
    max_side is None
    or max(h, w) <= max_side
    or pair.target.shape[1:3] != (h, w)
  ):
    return pair
  scale = max_side / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))

  def shrink(frames):
    return np.stack(
      [
        np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX))
        for f in frames
      ]
    )

  return dataclasses.replace(
    pair,
    source=shrink(pair.source),
    target=shrink(pair.target),
    media_shapes=(pair.source.shape[:3], pair.target.shape[:3]),
  )


def _load(
  row: Row, base_dir: epath.Path, max_frames: int
) -> tuple[Pair, tuple[tuple[bytes, str], tuple[bytes, str]]]:
  """Decodes the row's media; returns the pair and, per side, the encoded
  payload with the file extension to store it under."""
  if not row.prompt:
    raise Rejected("empty_prompt", "the instruction is empty")
  frames, payloads = [], []
  for what, relative, inline, inline_kind in (
    ("src_video", row.src_video, row.src_bytes, row.src_kind),
    ("tgt_video", row.tgt_video, row.tgt_bytes, row.tgt_kind),
  ):
    if inline is not None:
      where, payload = relative, inline
    else:
      where = base_dir / relative if relative else None
      if where is None or not where.exists():
        raise Rejected("missing_file", f"{what} {where}")
      payload = where.read_bytes()
    try:
      if inline is not None:
        kind, ext = inline_kind, video_io.media_extension(payload)
      else:
        kind = video_io.media_kind(relative)
        ext = os.path.splitext(relative)[1].lower()
      frames.append(video_io.decode_media(payload, kind, max_frames))
    except video_io.MediaError as e:
      raise Rejected("unreadable_media", f"{what} {where}: {e}") from e
    payloads.append((payload, ext))
  pair = Pair(row.key, row.prompt, frames[0], frames[1], row.origin)
  return pair, (payloads[0], payloads[1])


def _describe(value: Any) -> Any:
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {
      "type": type(value).__qualname__,
      **{
        f.name: _describe(getattr(value, f.name))
        for f in dataclasses.fields(value)
      },
    }
  if isinstance(value, (list, tuple)):
    return [_describe(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _describe(v) for k, v in value.items()}
  if isinstance(value, (str, int, float, bool, type(None))):
    return value
  if isinstance(value, np.ndarray):
    return value.tolist()
  if callable(value):
    module = getattr(value, "__module__", type(value).__module__)
    name = getattr(value, "__qualname__", type(value).__qualname__)
    return f"{module}.{name}"
  return repr(value)
