"""``kiwi_jax.testing``: tiny configs and fake batches in the formats the
model and the data pipeline use."""

import numpy as np
import pytest

from kiwi_jax import testing
from kiwi_jax.models.kiwi import KiwiProcessor


def test_tiny_configs_fit_together():
  cfgs = testing.tiny_configs()
  kiwi = cfgs["kiwi"]
  assert kiwi.codec == "pixel_unshuffle"
  assert kiwi.latent_channels == kiwi.dit.in_channels == 12
  assert kiwi.latent_shape(5, 32, 64) == (1, 5, 16, 32, 12)
  assert cfgs["vae"].z_dim == 12 and cfgs["mllm"].text.hidden_size == 64


@pytest.mark.parametrize(
  "mode,frames", [("image", 1), ("video", 5), ("reference", 5)]
)
def test_fake_batches_feed_the_model_inputs(tiny_tokenizer_dir, mode, frames):
  processor = KiwiProcessor(tiny_tokenizer_dir, testing.tiny_kiwi_config())
  batch = testing.fake_kiwi_batch(processor, mode)
  assert batch["source_video"].shape == (2, frames, 32, 32, 3)
  assert ("ref_image" in batch) == (mode == "reference")
  inputs = KiwiProcessor.model_inputs(batch["mllm"])
  ids = inputs["input_ids"]
  assert inputs["position_ids"].shape == (3,) + ids.shape
  assert inputs["segment_ids"].shape == ids.shape
  assert np.all(ids[inputs["segment_ids"] == 0] == processor.pad_token_id)
  with pytest.raises(ValueError, match="mode"):
    testing.fake_kiwi_batch(processor, "audio")
