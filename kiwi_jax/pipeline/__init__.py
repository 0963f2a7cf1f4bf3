"""The editing pipeline: inputs, the one-program sampler loop, outputs."""

from kiwi_jax.pipeline.edit_pipeline import (
  PHASES,
  CheckpointDirError,
  EditPipeline,
  EditResult,
)
from kiwi_jax.pipeline.inputs import (
  EditInputError,
  SourceClip,
  load_reference,
  load_source,
)
from kiwi_jax.pipeline.outputs import EditOutputError
from kiwi_jax.pipeline.seeds import SeedResults

__all__ = [
  "PHASES",
  "CheckpointDirError",
  "EditInputError",
  "EditOutputError",
  "EditPipeline",
  "EditResult",
  "SeedResults",
  "SourceClip",
  "load_reference",
  "load_source",
]
