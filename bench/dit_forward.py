"""Wan DiT speed: JAX vs diffusers on CPU, and the 5B model on a GPU.

CPU (always): a small Wan2.2-like DiT with the same random weights in
diffusers ``WanTransformer3DModel`` (eager, fp32) and in kiwi_jax (jit,
fp32), converted through ``kiwi_jax.converters.wan_dit``. Prints forward and
forward+backward times of both and the ratio diffusers / JAX (> 1 means JAX
is faster), all measured in this run.

GPU (only when JAX sees one, or with ``--scale_run_on_cpu`` at toy sizes to
check the code path): the ``wan2.2-ti2v-5b`` config in bf16 at 480p and 720p
x 81 frames (latents 21 x 30 x 52 and 21 x 44 x 80, 48 channels); prints
step time, model TFLOP/s, MFU and peak memory for the forward and for a
forward+backward step with full block remat.

  python bench/dit_forward.py                 # CPU comparison (+ GPU if any)
  python bench/dit_forward.py --scale_run_on_cpu   # toy-size GPU path on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from kiwi_jax import sharding  # noqa: E402
from kiwi_jax.models.dit import WanDiT, WanDiTConfig  # noqa: E402

# Dense bf16 peak (TFLOP/s) by device kind, for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}

SMALL = dict(
  patch_size=(1, 2, 2),
  num_attention_heads=2,
  attention_head_dim=128,
  in_channels=48,
  out_channels=48,
  text_dim=64,
  freq_dim=256,
  ffn_dim=1024,
  num_layers=4,
  rope_max_seq_len=1024,
)


def _time(fn, repeats):
  fn()  # warm-up / compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def cpu_comparison(repeats: int) -> None:
  import torch
  from diffusers import WanTransformer3DModel

  from kiwi_jax.converters import wan_dit

  torch.manual_seed(0)
  ref = WanTransformer3DModel(
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, **SMALL
  ).eval()
  with tempfile.TemporaryDirectory() as d:
    ref.save_pretrained(d)
    model = wan_dit.load_wan_dit(d, wan_dit.config_from_diffusers(d))
  rng = np.random.default_rng(0)
  b, t, h, w = 1, 5, 16, 16
  latents = rng.standard_normal((b, t, h, w, 48), dtype=np.float32)
  text = rng.standard_normal((b, 32, SMALL["text_dim"]), dtype=np.float32)
  timestep = np.array([500.0], np.float32)
  tokens = t * (h // 2) * (w // 2)
  print(
    f"CPU, fp32: dim 256, 4 layers, {tokens} video tokens, 32 text "
    f"tokens; best of {repeats}"
  )

  x_t = torch.from_numpy(latents).permute(0, 4, 1, 2, 3).contiguous()
  t_t, c_t = torch.from_numpy(timestep), torch.from_numpy(text)

  def torch_fwd():
    with torch.no_grad():
      ref(x_t, t_t, c_t).sample.sum().item()

  def torch_fwd_bwd():
    ref.zero_grad(set_to_none=True)
    loss = ref(x_t, t_t, c_t).sample.square().mean()
    loss.backward()

  graphdef, state = nnx.split(model)
  x_j, t_j, c_j = map(jnp.asarray, (latents, timestep, text))

  def loss_fn(state):
    out = nnx.merge(graphdef, state)(x_j, t_j, c_j, context_is_text=True)
    return jnp.mean(jnp.square(out.velocity))

  fwd = jax.jit(
    lambda s: (
      nnx.merge(graphdef, s)(x_j, t_j, c_j, context_is_text=True).velocity
    )
  )
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
  jax_fwd = lambda: jax.block_until_ready(fwd(state))
  jax_fwd_bwd = lambda: jax.block_until_ready(fwd_bwd(state))

  for name, jfn, tfn in (
    ("forward", jax_fwd, torch_fwd),
    ("forward+backward", jax_fwd_bwd, torch_fwd_bwd),
  ):
    tj, tt = _time(jfn, repeats), _time(tfn, repeats)
    print(
      f"  {name:17s} jax {tj * 1e3:8.1f} ms   diffusers {tt * 1e3:8.1f} ms"
      f"   diffusers/jax = {tt / tj:.2f}x"
    )


def model_flops(cfg: WanDiTConfig, tokens: int, context: int) -> float:
  """Matmul + attention FLOPs of one forward (multiply-add = 2 FLOPs)."""
  d, f = cfg.dim, cfg.ffn_dim
  per_layer = (
    2 * tokens * d * d * 4  # self q, k, v, o
    + 2 * tokens * d * d * 2  # cross q, o
    + 2 * context * d * d * 2  # cross k, v
    + 2 * tokens * d * f * 2  # FFN
    + 4 * tokens * tokens * d  # self QK^T and PV
    + 4 * tokens * context * d
  )  # cross QK^T and PV
  head = 2 * tokens * d * (cfg.patch_features + cfg.out_patch_features)
  return cfg.num_layers * per_layer + head


def scale_run(cfg: WanDiTConfig, grids, context_len: int, repeats: int):
  device = jax.devices()[0]
  kind = device.device_kind
  peak = next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
  mesh = sharding.make_mesh({"data": 1}, devices=[device])
  model = sharding.create_sharded(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)), mesh)
  graphdef, state = nnx.split(model)
  print(
    f"{kind}: {cfg.num_layers} layers, dim {cfg.dim}, "
    f"{jnp.dtype(cfg.dtype).name}, attention={cfg.attention}, "
    f"remat={cfg.remat_policy} for the backward; best of {repeats}; "
    "TFLOP/s and MFU count model FLOPs (fwd+bwd = 3x forward, remat "
    "recompute not counted)"
  )
  for label, (t, h, w) in grids.items():
    key = jax.random.key(0)
    latents = jax.random.normal(key, (1, t, h, w, cfg.in_channels), cfg.dtype)
    context = jax.random.normal(key, (1, context_len, cfg.dim), cfg.dtype)
    timestep = jnp.array([500.0])
    tokens = t * (h // 2) * (w // 2)

    def loss_fn(state):
      out = nnx.merge(graphdef, state)(latents, timestep, context)
      return jnp.mean(jnp.square(out.velocity.astype(jnp.float32)))

    fwd = jax.jit(
      lambda s: nnx.merge(graphdef, s)(latents, timestep, context).velocity
    )
    fwd_bwd = jax.jit(jax.grad(loss_fn))
    flops = model_flops(cfg, tokens, context_len)
    for name, fn, mult in (("forward", fwd, 1), ("fwd+bwd", fwd_bwd, 3)):
      seconds = _time(lambda: jax.block_until_ready(fn(state)), repeats)
      tflops = mult * flops / seconds / 1e12
      mfu = f"{100 * tflops / peak:5.1f}%" if peak else "n/a"
      stats = device.memory_stats() or {}
      peak_mem = stats.get("peak_bytes_in_use", 0) / 2**30
      print(
        f"  {label:5s} {tokens:6d} tokens {name:8s} {seconds * 1e3:9.1f} "
        f"ms  {tflops:7.1f} TFLOP/s  MFU {mfu}  peak {peak_mem:6.1f} GiB"
      )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_cpu", action="store_true")
  parser.add_argument(
    "--scale_run_on_cpu",
    action="store_true",
    help="run the GPU code path on CPU at toy sizes",
  )
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.default_backend()}")
  if not args.skip_cpu:
    cpu_comparison(args.repeats)
  if jax.default_backend() == "gpu":
    cfg = WanDiTConfig.from_variant(
      "wan2.2-ti2v-5b",
      dtype=jnp.bfloat16,
      param_dtype=jnp.bfloat16,
      attention=None,
      remat_policy="full",
    )
    scale_run(
      cfg,
      {"480p": (21, 30, 52), "720p": (21, 44, 80)},
      context_len=512,
      repeats=args.repeats,
    )
  elif args.scale_run_on_cpu:
    cfg = WanDiTConfig.from_variant(
      "tiny", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, remat_policy="full"
    )
    scale_run(cfg, {"toy": (3, 6, 10)}, context_len=8, repeats=1)
  else:
    print("No GPU: skipped the 5B bf16 480p/720p x 81-frame run.")


if __name__ == "__main__":
  main()
