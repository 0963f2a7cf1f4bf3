"""The real-size configs' precision, remat and attention defaults, the
bf16 train step they give, and the MLLM's frame count."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from configs import demo as demo_config
from kiwi_jax.models.dit import WanDiT, WanDiTConfig
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.mllm import vision_preprocess as vp
from kiwi_jax.tasks import kiwi_task
from kiwi_jax.train_lib import optimizers, train_step
from kiwi_jax.train_lib.train_state import ModelSplit, Precision

REAL_SIZE = [
  ("kiwi_wan22_5b", "stage=1"),
  ("kiwi_wan22_5b", "stage=2"),
  ("kiwi_wan22_5b", "stage=3"),
  ("kiwi_wan21_14b", "stage=2"),
]


@pytest.mark.parametrize("name, arg", REAL_SIZE)
def test_real_size_configs_compute_in_bf16_with_remat_and_flash(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  cfg = kiwi_task.KiwiTask(config).model_cfg
  for dtype in (cfg.dit.dtype, cfg.mllm.dtype, cfg.vae.dtype):
    assert jnp.dtype(dtype) == jnp.bfloat16
  for dtype in (cfg.dit.param_dtype, cfg.mllm.param_dtype):
    assert jnp.dtype(dtype) == jnp.float32  # master weights stay fp32
  assert Precision.from_mapping(config.precision).frozen_dtype == "bfloat16"
  assert cfg.dit.remat_policy == common.DIT_REMAT_POLICY != "none"
  assert cfg.mllm.remat
  assert cfg.dit.attention is None and cfg.mllm.attention is None
  assert cfg.vae.attention_implementation is None
  rules = dict(
    (name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
    for name, axes in config.sharding_rules
  )
  assert rules["embed"] == ("fsdp", "sequence")


def test_demo_config_keeps_fp32_compute():
  cfg = kiwi_task.KiwiTask(demo_config.get_config("runlocal")).model_cfg
  assert jnp.dtype(cfg.dit.dtype) == jnp.float32
  assert jnp.dtype(cfg.mllm.dtype) == jnp.float32


def test_model_overrides_win_over_precision():
  config = importlib.import_module("configs.kiwi_wan22_5b").get_config("")
  config.unlock()
  config.kiwi.model.dit.dtype = "float32"
  cfg = kiwi_task.KiwiTask(config).model_cfg
  assert jnp.dtype(cfg.dit.dtype) == jnp.float32
  assert jnp.dtype(cfg.mllm.dtype) == jnp.bfloat16


def test_bf16_step_keeps_fp32_masters_and_bf16_frozen():
  cfg = WanDiTConfig.from_variant("tiny", dtype=jnp.bfloat16, num_layers=1)
  precision = Precision(
    master_dtype="float32", compute_dtype="bfloat16", frozen_dtype="bfloat16"
  )
  opt_config = optimizers.OptimizerConfig(learning_rate=1e-3)
  optimizer = optimizers.make_optimizer(opt_config)

  def ctor():
    return WanDiT(cfg, rngs=nnx.Rngs(0))

  def loss_fn(model, batch, rng):
    del rng
    v = model(batch["x"], batch["t"], batch["context"]).velocity
    assert v.dtype == jnp.bfloat16  # the blocks ran in the compute dtype
    return jnp.mean(jnp.square(v.astype(jnp.float32))), {}

  split = ModelSplit.build(ctor, ("^blocks/",), precision=precision)
  state = train_step.init_train_state(ctor, split, optimizer, precision, 0)
  floating = lambda tree: [
    x
    for x in jax.tree.leaves(tree)  # noqa: E731
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  frozen_before = jax.device_get(state.frozen)
  step = train_step.make_train_step(
    split, loss_fn, optimizer, opt_config, precision, donate=False
  )
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.normal(size=(2, 1, 4, 4, 48)), jnp.bfloat16),
    "t": jnp.asarray([100.0, 700.0]),
    "context": jnp.asarray(rng.normal(size=(2, 5, 48)), jnp.bfloat16),
  }
  new_state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["l2_grads"]))
  assert float(metrics["l2_grads"]) > 0
  assert all(x.dtype == jnp.float32 for x in floating(new_state.params))
  assert all(x.dtype == jnp.float32 for x in floating(new_state.opt_state))
  assert all(x.dtype == jnp.bfloat16 for x in floating(new_state.frozen))
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen_before,
    jax.device_get(new_state.frozen),
  )
  moved = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params
  )
  assert any(jax.tree.leaves(moved))


def test_mllm_max_frames_is_honoured(tiny_tokenizer_dir):
  config = importlib.import_module("configs.kiwi_wan21_14b").get_config(
    "stage=2"
  )
  assert kiwi_task.KiwiTask(config).model_cfg.mllm_max_frames == 10
  tiny = KiwiEditConfig.from_variant("tiny", mllm_max_frames=10)
  processor = kiwi_task.KiwiProcessor(str(tiny_tokenizer_dir), tiny).qwen
  assert processor.cfg.max_frames == 10
  frames = np.zeros((17, 56, 56, 3), np.uint8)
  frames[:] = np.arange(17, dtype=np.uint8)[:, None, None, None] * 9
  out = processor("make it red", frames=frames)
  # 10 frames -> 5 temporal grids (16 frames would give 8).
  assert tuple(out["grid_thw"][0])[0] == 5
  _, grid16 = vp.preprocess_video(frames)
  assert grid16[0] == 8
