"""Wan VAE speed: JAX vs diffusers ``AutoencoderKLWan`` in one run.

CPU (always): a tiny 2.2-style and 2.1-style VAE with the same random
weights on both sides (converted through ``kiwi_jax.converters.wan_vae``), fp32,
encode and decode at small shapes; prints the per-call times (median of
``--repeats`` after one warm-up/compile call) and the ratio torch/JAX (> 1
means JAX is faster).

GPU (only when JAX sees one): the full Wan2.2 VAE (random weights, bf16
compute) on 720p x 81 frames, untiled and tiled with DiffSynth's
defaults (30x52 latent tiles, stride 15x26): time and peak device memory for
encode and decode (JAX only; torch here is a CPU build).

Usage::

  python bench/vae.py [--frames 9] [--size 64x96] [--repeats 3]
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


def _median_time(fn, repeats):
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench_cpu(style: str, frames: int, h: int, w: int, repeats: int):
  import torch
  from diffusers import AutoencoderKLWan

  from kiwi_jax.converters.wan_vae import diffusers_config, load_wan_vae
  from kiwi_jax.models.vae import WanVAEConfig
  from kiwi_jax.models.vae.tiling import VAERunner

  cfg = WanVAEConfig.from_variant(f"{style}-tiny")
  torch.manual_seed(0)
  torch_vae = AutoencoderKLWan(**diffusers_config(cfg)).eval()
  with tempfile.TemporaryDirectory() as d:
    torch_vae.save_pretrained(d)
    runner = VAERunner(load_wan_vae(d))

  video = np.random.default_rng(0).uniform(-1, 1, (1, frames, h, w, 3))
  video = video.astype(np.float32)
  video_t = torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())
  latents = np.asarray(runner.encode(video))
  latents_t = torch.from_numpy(latents.transpose(0, 4, 1, 2, 3).copy())

  def torch_encode():
    with torch.no_grad():
      torch_vae.encode(video_t).latent_dist.mode()

  def torch_decode():
    with torch.no_grad():
      torch_vae.decode(latents_t)

  t_enc = _median_time(torch_encode, repeats)
  t_dec = _median_time(torch_decode, repeats)
  j_enc = _median_time(
    lambda: jax.block_until_ready(runner.encode(video)), repeats
  )
  j_dec = _median_time(
    lambda: jax.block_until_ready(runner.decode(latents)), repeats
  )
  print(
    f"[cpu fp32] {cfg.name} video {frames}x{h}x{w}: "
    f"encode jax {j_enc * 1e3:.1f} ms, torch {t_enc * 1e3:.1f} ms, "
    f"ratio torch/jax {t_enc / j_enc:.2f}; "
    f"decode jax {j_dec * 1e3:.1f} ms, torch {t_dec * 1e3:.1f} ms, "
    f"ratio torch/jax {t_dec / j_dec:.2f}"
  )


def _peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", float("nan"))


def bench_gpu(frames: int = 81, h: int = 720, w: int = 1280):
  from kiwi_jax.models.vae import WanVAEConfig, init_wan_vae
  from kiwi_jax.models.vae.tiling import VAERunner

  cfg = WanVAEConfig.from_variant(
    "wan2.2", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
  )
  runner = VAERunner(init_wan_vae(cfg))
  video = np.random.default_rng(0).uniform(-1, 1, (1, frames, h, w, 3))
  video = video.astype(np.float32)
  for tiled in (False, True):
    label = "tiled 30x52/15x26" if tiled else "untiled"
    try:
      t_enc = _median_time(
        lambda: jax.block_until_ready(runner.encode(video, tiled=tiled)), 1
      )
      latents = runner.encode(video, tiled=tiled)
      peak_enc = _peak_bytes()
      t_dec = _median_time(
        lambda: jax.block_until_ready(runner.decode(latents, tiled=tiled)), 1
      )
      peak_dec = _peak_bytes()
      print(
        f"[gpu bf16] wan2.2 {frames}x{h}x{w} {label}: encode "
        f"{t_enc:.2f} s, decode {t_dec:.2f} s, peak memory after encode "
        f"{peak_enc / 2**30:.1f} GiB, after decode "
        f"{peak_dec / 2**30:.1f} GiB"
      )
    except Exception as e:  # e.g. out of memory untiled on a small GPU
      print(
        f"[gpu bf16] wan2.2 {frames}x{h}x{w} {label}: failed: "
        f"{type(e).__name__}: {str(e).splitlines()[0]}"
      )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=9)
  parser.add_argument("--size", default="64x96")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  h, w = (int(v) for v in args.size.split("x"))
  if jax.default_backend() == "gpu":
    bench_gpu()
  else:
    print("No GPU visible to JAX: skipping the 720p x 81-frame GPU bench.")
  with jax.default_device(jax.devices("cpu")[0]):
    for style in ("wan2.2", "wan2.1"):
      bench_cpu(style, args.frames, h, w, args.repeats)


if __name__ == "__main__":
  main()
