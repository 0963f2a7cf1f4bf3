"""DiT sections: the train step (forward + backward under remat) and the
inference step against diffusers' ``WanTransformer3DModel``.

Both use the DiT config of ``configs/kiwi_wan22_5b.py`` (``kiwi-5b``'s
Wan2.2-TI2V-5B DiT) in bf16 with ``attention=None`` (cuDNN flash on a
GPU), random weights, one sample and one timestep per sample. The train
step sees Kiwi's context (512 connector rows of width ``dim``); the
inference step takes the stock text path (512 x ``text_dim`` features
through ``text_embedding``), which is what diffusers' model runs, so both
sides compute the same products.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from bench.suite import common
from kiwi_jax import flops as flops_lib
from kiwi_jax.layers import attention as attention_lib
from kiwi_jax.models.dit import WanDiT, WanDiTConfig


def dit_config(scale: common.Scale, **overrides) -> WanDiTConfig:
  fields = dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, attention=None)
  fields.update(overrides)
  return WanDiTConfig.from_variant(scale.dit, **fields)


def chosen_attention(cfg: WanDiTConfig, tokens: int) -> str:
  """What ``attention=None`` runs for the DiT's self-attention here."""
  if cfg.attention is not None:
    return cfg.attention
  q = jax.ShapeDtypeStruct((1, tokens, cfg.num_heads, cfg.head_dim), cfg.dtype)
  return attention_lib.choose_implementation(q, q)


def _rates(flops: float, seconds: float, peak: float | None) -> dict:
  tflops = flops / seconds / 1e12
  return {
    "tflops": tflops,
    "mfu": None if peak is None else flops / seconds / peak,
  }


def train(
  scale: common.Scale,
  rec: common.Recorder,
  deadline: common.Deadline,
  remat_policies,
) -> None:
  """Forward + backward of an MSE velocity loss, per remat policy."""
  mesh = common.one_device_mesh()
  cfg = dit_config(scale)
  peak = flops_lib.peak_flops_per_chip()
  t, h, w = scale.latent_grid
  tokens = flops_lib.dit_tokens(cfg, scale.latent_grid)
  rec.set(
    config=scale.dit,
    tokens=tokens,
    context_len=scale.context_len,
    attention=chosen_attention(cfg, tokens),
    peak_flops=peak,
    policies={},
  )
  start = time.perf_counter()
  model = common.random_module(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)), mesh)
  state = nnx.state(model)
  jax.block_until_ready(state)
  rec.set(init_s=time.perf_counter() - start)
  latents = common.random_array((1, t, h, w, cfg.in_channels), seed=1)
  target = common.random_array(latents.shape, seed=2)
  context = common.random_array((1, scale.context_len, cfg.dim), seed=3)
  timestep = jnp.array([500.0], jnp.float32)
  del model

  for policy in remat_policies:
    policy_cfg = cfg.replace(remat_policy=policy)
    count = flops_lib.dit_flops(
      policy_cfg,
      batch=1,
      latent_grid=scale.latent_grid,
      context_len=scale.context_len,
    )
    pgraph = graphdef_of(policy_cfg)

    def loss_fn(params):
      out = nnx.merge(pgraph, params)(latents, timestep, context)
      diff = out.velocity.astype(jnp.float32) - target.astype(jnp.float32)
      return jnp.mean(jnp.square(diff))

    entry = {
      "model_tflop": count.train / 1e12,
      "hardware_tflop": count.hardware_train / 1e12,
    }
    rec.update("policies", **{policy: entry})
    try:
      begin = time.perf_counter()
      step = jax.jit(jax.value_and_grad(loss_fn)).lower(state).compile()
      entry["compile_s"] = time.perf_counter() - begin
      rec.update("policies", **{policy: entry})
      timing = common.time_calls(
        lambda: jax.block_until_ready(step(state)), scale.repeats, deadline
      )
      entry.update(timing)
      entry.update(_rates(count.train, timing["median_s"], peak))
      entry["hardware_tflops"] = (
        count.hardware_train / timing["median_s"] / 1e12
      )
      entry.update(common.memory())
    except Exception as error:  # noqa: BLE001  (OOM, compile failure)
      entry["error"] = common.error_text(error)
    rec.update("policies", **{policy: entry})
    spent = entry.get("compile_s", 0) + sum(entry.get("times_s", ()))
    if not deadline.allows(1.5 * spent + 5):
      break
  done = {
    k: v for k, v in rec.data["policies"].items() if "mfu" in v or "tflops" in v
  }
  if done:
    best = max(done, key=lambda k: done[k]["tflops"])
    rec.set(
      best_policy=best,
      step_s=done[best]["median_s"],
      tflops=done[best]["tflops"],
      mfu=done[best]["mfu"],
    )


def graphdef_of(cfg: WanDiTConfig):
  """The DiT's graphdef for ``cfg`` (its config, the remat policy among
  it, is static), from an abstract model: no weights."""
  return nnx.graphdef(nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0))))


def infer(
  scale: common.Scale, rec: common.Recorder, deadline: common.Deadline
) -> None:
  """One denoising step (DiT forward) in kiwi_jax and in diffusers, same
  shapes, both warm; ratio = diffusers' best backend time / kiwi_jax's."""
  from bench.suite import diffusers_wan  # torch: only in this section

  mesh = common.one_device_mesh()
  cfg = dit_config(scale)
  t, h, w = scale.latent_grid
  tokens = flops_lib.dit_tokens(cfg, scale.latent_grid)
  count = flops_lib.dit_flops(
    cfg,
    batch=1,
    latent_grid=scale.latent_grid,
    context_len=scale.context_len,
    context_is_text=True,
  )
  peak = flops_lib.peak_flops_per_chip()
  rec.set(
    config=scale.dit,
    tokens=tokens,
    context_len=scale.context_len,
    model_tflop=count.forward / 1e12,
    peak_flops=peak,
    attention=chosen_attention(cfg, tokens),
  )
  model = common.random_module(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)), mesh)
  graphdef, state = nnx.split(model)
  del model
  latents = common.random_array((1, t, h, w, cfg.in_channels), seed=1)
  text = common.random_array((1, scale.context_len, cfg.text_dim), seed=3)
  timestep = jnp.array([500.0], jnp.float32)

  def forward(params, latents, timestep, text):
    return nnx.merge(graphdef, params)(
      latents, timestep, text, context_is_text=True
    ).velocity

  jax_entry = {}
  try:
    begin = time.perf_counter()
    step = jax.jit(forward).lower(state, latents, timestep, text).compile()
    jax_entry["compile_s"] = time.perf_counter() - begin
    jax_entry.update(
      common.time_calls(
        lambda: jax.block_until_ready(step(state, latents, timestep, text)),
        scale.repeats,
        deadline,
      )
    )
    jax_entry.update(_rates(count.forward, jax_entry["median_s"], peak))
    jax_entry.update(common.memory())
  except Exception as error:  # noqa: BLE001
    jax_entry["error"] = common.error_text(error)
  rec.set(kiwi_jax=jax_entry)
  # The same inputs for torch (channels first); JAX's buffers stay put.
  inputs = {
    name: jax.device_get(x)
    for name, x in (
      ("latents", latents),
      ("timestep", timestep),
      ("text", text),
    )
  }
  torch_entry = diffusers_wan.time_forward(
    cfg, inputs, scale.repeats, deadline, rec
  )
  best = torch_entry.get("best_backend")
  if best and "median_s" in jax_entry:
    torch_s = torch_entry["backends"][best]["median_s"]
    rec.set(
      step_s=jax_entry["median_s"],
      diffusers_step_s=torch_s,
      speedup=torch_s / jax_entry["median_s"],
      diffusers_tflops=count.forward / torch_s / 1e12,
    )
