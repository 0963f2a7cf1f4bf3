"""Several seeds in one edit: checking them, naming and writing the outputs.

``EditPipeline.edit_seeds(video, prompt, seeds=[0, 1, 2, 3])`` (and
``kiwi-edit --seeds 0,1,2,3``) encodes the MLLM conditions and the VAE
latents of the source and reference once, then runs the denoising loop
over a batch of noises, the conditions broadcast to the batch inside the
compiled loop. Seed k's noise is the noise a single edit with ``seed=k``
draws (``sampler.initial_noise(k, [1, t, h, w, c])``), so each seed's edit
equals that separate run's within float32 rounding (the batched DiT may
sum in another order).

Memory: the loop's activations grow with the batch. ``seed_batch`` (the
CLI's ``--seed-batch N``) denoises at most N seeds at a time (default: all
at once); each chunk size is compiled once. The latents are decoded one
seed at a time, so the VAE decode's peak is that of a single edit.

Outputs of ``--out out.mp4``: ``out_seed<k>.mp4`` for every seed and
``out_grid.mp4``, the source then each seed's edit side by side (in seed
order). Every file is written under a temporary name and renamed; a failure
removes the files already written.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from kiwi_jax.media import compare
from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import outputs as outputs_lib
from kiwi_jax.utils import paths

MAX_SEED = 2**32 - 1  # JAX keys keep 32 bits
SEED_SUFFIX = "_seed"
GRID_SUFFIX = "_grid"


def check_seeds(seeds, name: str = "seeds") -> list[int]:
  """A non-empty list of distinct integer seeds in 0..``MAX_SEED``.

  Raises:
    EditInputError: naming ``name`` and the bad value.
  """
  if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
    raise inputs_lib.EditInputError(
      f"{name} must be a list of integer seeds, got {seeds!r}."
    )
  if not seeds:
    raise inputs_lib.EditInputError(f"{name} must name at least one seed.")
  for seed in seeds:
    if (
      isinstance(seed, bool)
      or not isinstance(seed, numbers.Integral)
      or not 0 <= seed <= MAX_SEED
    ):
      raise inputs_lib.EditInputError(
        f"{name}: every seed must be an integer in 0..{MAX_SEED}, got {seed!r}."
      )
  seen = set()
  for seed in seeds:
    if seed in seen:
      raise inputs_lib.EditInputError(f"{name}: seed {seed} is repeated.")
    seen.add(seed)
  return [int(s) for s in seeds]


def parse_seeds(text: str, name: str = "--seeds") -> list[int]:
  """``"0,1,2"`` -> ``[0, 1, 2]``; raises EditInputError on empty entries,
  non-integers, negatives, out-of-range values or repeats."""
  seeds = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      raise inputs_lib.EditInputError(
        f"{name} {text!r}: empty entry; expected comma-separated seeds "
        "such as 0,1,2,3."
      )
    if not part.isdigit() or not part.isascii():
      raise inputs_lib.EditInputError(
        f"{name} {text!r}: {part!r} is not a seed (an integer in "
        f"0..{MAX_SEED})."
      )
    seeds.append(int(part))
  return check_seeds(seeds, name)


def check_seed_batch(seed_batch, name: str = "seed_batch") -> int | None:
  """None (all seeds at once) or a positive integer."""
  if seed_batch is None:
    return None
  if (
    isinstance(seed_batch, bool)
    or not isinstance(seed_batch, numbers.Integral)
    or seed_batch < 1
  ):
    raise inputs_lib.EditInputError(
      f"{name} must be a positive integer, got {seed_batch!r}."
    )
  return int(seed_batch)


def chunks(seeds: Sequence[int], seed_batch: int | None) -> list[list[int]]:
  """The seeds in batches of at most ``seed_batch`` (None: one batch)."""
  size = len(seeds) if seed_batch is None else seed_batch
  return [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]


def seed_path(path, seed: int) -> pathlib.Path:
  """``out.mp4`` -> ``out_seed<k>.mp4``."""
  path = pathlib.Path(os.fspath(path))
  return path.with_name(f"{path.stem}{SEED_SUFFIX}{seed}{path.suffix}")


def grid_path(path) -> pathlib.Path:
  """``out.mp4`` -> ``out_grid.mp4``."""
  path = pathlib.Path(os.fspath(path))
  return path.with_name(f"{path.stem}{GRID_SUFFIX}{path.suffix}")


def output_paths(
  path,
  seeds: Sequence[int],
  *,
  side_by_side: bool = False,
  image_mode: bool = False,
) -> list[pathlib.Path]:
  """Every file a multi-seed save writes: each seed's edit (and its
  side-by-side views), then the grid."""
  written = []
  for seed in seeds:
    edit = seed_path(path, seed)
    written.append(edit)
    if side_by_side:
      written += outputs_lib.side_by_side_paths(edit, image_mode=image_mode)
  return written + [grid_path(path)]


def grid(source: np.ndarray, edits: Sequence[np.ndarray]) -> np.ndarray:
  """[source | edit_1 | ... | edit_n] panels, uint8[T, H, (n+1)*W, 3]."""
  for edit in edits:
    if edit.shape != source.shape:
      raise ValueError(
        f"grid: source {source.shape} and edit {edit.shape} differ."
      )
  return compare.side_by_side(source, *edits)


@dataclasses.dataclass
class SeedResults:
  """The edits of one multi-seed run.

  Attributes:
    seeds: the seeds, in the order given.
    results: each seed's ``EditResult`` (same order).
  """

  seeds: list[int]
  results: list  # list[edit_pipeline.EditResult]

  def __getitem__(self, seed: int):
    """The ``EditResult`` of ``seed``."""
    return self.results[self.seeds.index(seed)]

  def grid(self) -> np.ndarray:
    """uint8[T, H, (n+1)*W, 3]: the source, then every seed's edit."""
    return grid(self.results[0].source.frames, [r.frames for r in self.results])

  def save(
    self, path, *, side_by_side: bool = False, fps: float | None = None
  ) -> list[pathlib.Path]:
    """Writes ``<stem>_seed<k><ext>`` per seed (each with its side-by-side
    views if asked) and ``<stem>_grid<ext>``; ``path`` itself is not
    written. Returns the written paths (``output_paths`` order).

    Raises:
      EditOutputError: a bad path or fps.
      paths.OutputIsInputError: an output is the source file.
    """
    first = self.results[0]
    image_mode = first.frames.shape[0] == 1
    outputs_lib.check_output_path(path, image_mode=image_mode)
    targets = output_paths(
      path, self.seeds, side_by_side=side_by_side, image_mode=image_mode
    )
    if os.path.isfile(first.source.name):
      paths.refuse_inputs_as_outputs(
        [("output", t) for t in targets], [("source", first.source.name)]
      )
    fps = first.source.fps if fps is None else fps
    written = []
    try:
      for seed, result in zip(self.seeds, self.results):
        written += result.save(
          seed_path(path, seed), side_by_side=side_by_side, fps=fps
        )
      written.append(
        outputs_lib.write_frames(grid_path(path), self.grid(), fps)
      )
    except BaseException:
      for done in written:
        done.unlink(missing_ok=True)
      raise
    return written
