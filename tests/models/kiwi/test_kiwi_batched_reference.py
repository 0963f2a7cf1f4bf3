"""Batched reference mode: rows with different reference-image sizes, padded
to one static length and masked, give each row's unpadded result."""

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import abstract_kiwi

pytestmark = pytest.mark.slow

CFG = KiwiEditConfig.from_variant("tiny")


def random_model(seed=0):
  graphdef, abstract = abstract_kiwi(CFG)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(
    lambda a: (0.2 * rng.standard_normal(a.shape)).astype(np.float32), abstract
  )
  return nnx.merge(graphdef, state)


def test_padded_reference_rows_are_masked_out():
  model = random_model()
  m = CFG.mllm
  n_q, refs = CFG.num_ref_queries, (3, 5)
  rows = []
  for n_ref in refs:
    text = [60] * (7 - n_ref)  # equal lengths, different reference sizes
    rows.append(
      [1, m.vision_start_token_id, m.video_token_id, m.vision_end_token_id]
      + text
      + [m.vision_start_token_id]
      + [m.image_token_id] * n_ref
      + [m.vision_end_token_id]
      + [m.query_token_id] * n_q
      + [2, 40]
    )
  ids = np.asarray(rows)
  rng = np.random.default_rng(1)
  hidden = rng.standard_normal(ids.shape + (CFG.mllm_hidden,)).astype(
    np.float32
  )
  batched = model.conditions_from_hidden(
    hidden, ids, "reference", ref_tokens=max(refs)
  )
  np.testing.assert_array_equal(
    np.asarray(batched.mask)[:, : max(refs)],
    [np.arange(max(refs)) < n for n in refs],
  )
  shape = (2, 1, 4, 6, CFG.dit.in_channels)
  lat = rng.standard_normal(shape).astype(np.float32)
  src = rng.standard_normal(shape).astype(np.float32)
  ref = rng.standard_normal(shape).astype(np.float32)
  t, sigma = (
    np.array([500.0, 900.0], np.float32),
    np.array([0.5, 0.9], np.float32),
  )
  vel = model.denoise_step(
    lat,
    t,
    batched.context,
    source_latents=src,
    sigma=sigma,
    ref_latents=ref,
    context_mask=batched.mask,
  )
  for b, n_ref in enumerate(refs):
    row = slice(b, b + 1)
    alone = model.conditions_from_hidden(
      hidden[row], ids[row], "reference", ref_tokens=n_ref
    )
    np.testing.assert_allclose(
      np.asarray(batched.context[b])[np.asarray(batched.mask[b])],
      np.asarray(alone.context[0]),
      atol=1e-6,
    )
    want = model.denoise_step(
      lat[row],
      t[row],
      alone.context,
      source_latents=src[row],
      sigma=sigma[row],
      ref_latents=ref[row],
    )
    np.testing.assert_allclose(
      np.asarray(vel[b]), np.asarray(want[0]), atol=1e-5
    )
