"""The editing pipeline: inputs, the one-program sampler loop, outputs."""

from kiwi_jax.pipeline.edit_pipeline import (
                                             PHASES,
                                             CheckpointDirError,
                                             EditPipeline,
                                             EditResult,
                                             load_model,
)
from kiwi_jax.pipeline.inputs import (
                                             EditInputError,
                                             SourceClip,
                                             load_reference,
                                             load_source,
)
from kiwi_jax.pipeline.outputs import EditOutputError

__all__ = [
    "PHASES", "CheckpointDirError", "EditInputError", "EditOutputError",
    "EditPipeline", "EditResult", "SourceClip", "load_model",
    "load_reference", "load_source",
]
