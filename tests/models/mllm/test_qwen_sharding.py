"""Qwen25VL on 8 fake CPU devices: sharded result equals unsharded."""

import jax
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.models.mllm import Qwen25VL, Qwen25VLConfig
from kiwi_jax.models.mllm.rope_index import mrope_position_ids
from kiwi_jax.models.mllm.vision import vision_metadata

CFG = Qwen25VLConfig.from_variant("tiny")


def _batch(batch_size=4):
  grid = (1, 8, 12)
  n_vis = int(np.prod(grid)) // 4
  ids = np.asarray(
    [30, 31, CFG.vision_start_token_id]
    + [CFG.image_token_id] * n_vis
    + [CFG.vision_end_token_id, 40, 41, 42]
  )
  pos = mrope_position_ids(
    ids,
    image_grid_thw=[grid],
    image_token_id=12,
    video_token_id=13,
    vision_start_token_id=9,
  )
  meta = vision_metadata([grid], CFG.vision, num_patches=128)
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((batch_size, 128, 1176)).astype(np.float32)
  stack = lambda x: np.stack([x] * batch_size)
  return dict(
    input_ids=stack(ids),
    position_ids=np.stack([pos] * batch_size, axis=1),
    pixel_values=pixels,
    vision_meta={k: stack(v) for k, v in meta.items()},
  )


def test_sharded_forward_matches_unsharded():
  ctor = lambda: Qwen25VL(CFG, rngs=nnx.Rngs(0))
  batch = _batch()
  forward = nnx.jit(lambda m, b: m(**b).last_hidden_state)
  expected = np.asarray(forward(ctor(), dict(batch)))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = sharding.create_sharded(ctor, mesh)
  qkv = model.visual.blocks[0].attn.qkv.kernel[...]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  positions = batch.pop("position_ids")  # int[3, B, T]: batch on axis 1
  inputs = sharding.host_to_global(batch, mesh)
  inputs["position_ids"] = jax.device_put(
    positions,
    jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"))
    ),
  )
  with sharding.use_mesh(mesh):
    out = forward(model, inputs)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
