"""The optimiser against torch AdamW + ConstantLR + clipping, and its pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kiwi_jax.train_lib import optimizers


def test_constant_lr_warmup_is_torch_default():
  config = optimizers.OptimizerConfig(learning_rate=3e-5)
  schedule = optimizers.constant_lr_warmup(config)
  lrs = [float(schedule(i)) for i in range(8)]
  np.testing.assert_allclose(lrs, [1e-5] * 5 + [3e-5] * 3, rtol=1e-6)
  # Two processes: accelerate steps the scheduler twice per update.
  two = optimizers.constant_lr_warmup(
    optimizers.OptimizerConfig(learning_rate=3e-5, scheduler_steps_per_update=2)
  )
  np.testing.assert_allclose(
    [float(two(i)) for i in range(4)], [1e-5] * 3 + [3e-5], rtol=1e-6
  )
  # With accumulation the micro-step maps to its update.
  acc = optimizers.OptimizerConfig(learning_rate=3e-5, grad_accum_steps=2)
  assert float(optimizers.learning_rate_at(acc, jnp.int32(9))) == (
    pytest.approx(1e-5)
  )
  assert float(optimizers.learning_rate_at(acc, jnp.int32(10))) == (
    pytest.approx(3e-5)
  )


def test_cosine_decay_option():
  config = optimizers.OptimizerConfig.from_mapping(
    {
      "learning_rate": 2e-3,
      "decay": "cosine",
      "decay_steps": 100,
      "decay_to": 0.1,
    }
  )
  schedule = optimizers.constant_lr_warmup(config)
  lrs = np.array([float(schedule(i)) for i in (0, 4, 5, 50, 100, 150)])
  cos = lambda f: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * f))  # noqa: E731
  expected = 2e-3 * np.array(
    [cos(0) / 3, cos(0.04) / 3, cos(0.05), cos(0.5), 0.1, 0.1]
  )
  np.testing.assert_allclose(lrs, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="decay_steps"):
    optimizers.OptimizerConfig.from_mapping({"decay": "cosine"})
  with pytest.raises(ValueError, match="'none' or 'cosine'"):
    optimizers.OptimizerConfig.from_mapping({"decay": "linear"})


def test_config_from_mapping_rejects_unknown_keys():
  config = optimizers.OptimizerConfig.from_mapping({"learning_rate": 2e-5})
  assert config.learning_rate == 2e-5 and config.weight_decay == 0.01
  with pytest.raises(ValueError, match="learning_rat"):
    optimizers.OptimizerConfig.from_mapping({"learning_rat": 1.0})
  with pytest.raises(ValueError, match="grad_accum_steps"):
    optimizers.OptimizerConfig.from_mapping({"grad_accum_steps": 0})


@pytest.mark.torch
def test_matches_torch_adamw_constantlr_and_clipping():
  import torch

  rng = np.random.default_rng(0)
  shapes = {"w": (5, 3), "b": (3,)}
  init = {
    k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()
  }
  grads = [
    {
      k: (rng.standard_normal(s) * (4.0 if i % 2 else 0.1)).astype(np.float32)
      for k, s in shapes.items()
    }
    for i in range(8)
  ]

  config = optimizers.OptimizerConfig(learning_rate=1e-2)
  optimizer = optimizers.make_optimizer(config)
  params = jax.tree.map(jnp.asarray, init)
  state = optimizer.init(params)
  for g in grads:
    updates, state = optimizer.update(
      jax.tree.map(jnp.asarray, g), state, params
    )
    params = optax.apply_updates(params, updates)

  tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
  topt = torch.optim.AdamW(list(tparams.values()), lr=1e-2, weight_decay=0.01)
  sched = torch.optim.lr_scheduler.ConstantLR(topt)
  for g in grads:
    for k, p in tparams.items():
      p.grad = torch.tensor(g[k])
    torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)
    topt.step()
    sched.step()
  for k in shapes:
    np.testing.assert_allclose(
      params[k], tparams[k].detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_accumulation_applies_the_mean_every_k():
  config = optimizers.OptimizerConfig(
    learning_rate=0.1,
    grad_accum_steps=3,
    warmup_steps=0,
    weight_decay=0.0,
    grad_clip_norm=None,
  )
  accumulating = optimizers.make_optimizer(config)
  single = optimizers.make_optimizer(
    optimizers.OptimizerConfig(
      learning_rate=0.1, warmup_steps=0, weight_decay=0.0, grad_clip_norm=None
    )
  )
  params = {"x": jnp.ones(4)}
  grads = [{"x": jnp.full(4, v)} for v in (1.0, 2.0, 6.0)]
  state = accumulating.init(params)
  p = params
  for i, g in enumerate(grads):
    updates, state = accumulating.update(g, state, p)
    p = optax.apply_updates(p, updates)
    if i < 2:
      np.testing.assert_array_equal(p["x"], params["x"])  # untouched
  mean = {"x": jnp.full(4, 3.0)}
  expected, _ = single.update(mean, single.init(params), params)
  np.testing.assert_allclose(
    p["x"], optax.apply_updates(params, expected)["x"], rtol=1e-6
  )
