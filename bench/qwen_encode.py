"""Qwen2.5-VL encode time: kiwi_jax vs transformers, measured in one run.

  python bench/qwen_encode.py [--iters=5] [--case=auto|tiny|3b]

``tiny`` (the default on CPU): the ``tiny`` config, random fp32 weights
converted from a transformers ``Qwen2_5_VLModel`` through
kiwi_jax/converters/qwen2_5_vl.py, one prompt with a video (2 temporal grids), text
and an image, as in the parity tests.

``3b`` (the default when JAX sees a GPU): the full Qwen2.5-VL-3B config with
random bf16 weights, Kiwi's reference-mode inference input: 16 source
frames at 262,144 px per frame (504 x 504 -> 8 x 36 x 36 patches, 2,592
video tokens), a reference image of 768 tokens (672 x 896), the
instruction and 768 query placeholders. transformers runs on the same
machine when torch sees a GPU too; otherwise only the JAX time is printed.

Both sides run the whole encoder (vision tower, scatter, decoder); the JAX
side is one jitted program (compile time reported separately); the time is
the median of ``--iters`` runs after a warm-up.
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.models.mllm import Qwen25VL, Qwen25VLConfig, bucketing
from kiwi_jax.models.mllm.rope_index import mrope_position_ids
from kiwi_jax.models.mllm.vision import required_patches

CASES = {
  # (config variant, video grid, image grid, queries, text tokens)
  "tiny": ("tiny", (2, 8, 12), (1, 12, 20), 16, 24),
  "3b": ("qwen2.5-vl-3b", (8, 36, 36), (1, 48, 64), 768, 60),
}


def build_prompt(cfg, video_grid, image_grid, n_queries, n_text, seed=0):
  """Reference-mode token layout: text, video, text, image, queries, 2."""
  rng = np.random.default_rng(seed)
  text = lambda n: list(rng.integers(20, min(1000, cfg.text.vocab_size), n))
  vs, ve = cfg.vision_start_token_id, cfg.vision_end_token_id
  ids = (
    text(n_text // 2)
    + [vs]
    + [cfg.video_token_id] * (int(np.prod(video_grid)) // 4)
    + [ve]
    + text(n_text // 2)
    + [vs]
    + [cfg.image_token_id] * (int(np.prod(image_grid)) // 4)
    + [ve]
    + [cfg.query_token_id] * n_queries
    + text(2)
  )
  ids = np.asarray(ids, np.int64)
  video = rng.standard_normal((int(np.prod(video_grid)), 1176), np.float32)
  image = rng.standard_normal((int(np.prod(image_grid)), 1176), np.float32)
  return ids, video, image


def jax_encoder(
  model, cfg, ids, video, image, video_grid, image_grid, n_queries, dtype
):
  """Returns (run, compile_seconds) for a jitted encode of the prompt."""
  pos = mrope_position_ids(
    ids,
    image_grid_thw=[image_grid],
    video_grid_thw=[video_grid],
    image_token_id=cfg.image_token_id,
    video_token_id=cfg.video_token_id,
    vision_start_token_id=cfg.vision_start_token_id,
  )
  example = {
    "input_ids": ids,
    "position_ids": pos,
    # Images first, then videos (transformers' feature order).
    "pixel_values": np.concatenate([image, video]),
    "grid_thw": np.asarray([image_grid, video_grid]),
  }
  round_up = lambda n, m: -(-n // m) * m
  padded = bucketing.pad_example(
    example,
    cfg.vision,
    pad_token_id=0,
    num_patches=round_up(required_patches(example["grid_thw"], cfg.vision), 64),
    seq_len=round_up(ids.size, 64),
  )
  batch = {k: v[None] for k, v in padded.items() if k != "grid_thw"}
  batch["position_ids"] = np.transpose(batch["position_ids"], (1, 0, 2))
  inputs = jax.device_put(bucketing.model_inputs(batch))
  inputs["pixel_values"] = inputs["pixel_values"].astype(dtype)
  queries = jnp.zeros((n_queries, cfg.text.hidden_size), dtype)
  graphdef, state = nnx.split(model)

  @jax.jit
  def encode(state, inputs, queries):
    return nnx.merge(graphdef, state)(
      **inputs, queries=queries
    ).last_hidden_state

  start = time.perf_counter()
  compiled = encode.lower(state, inputs, queries).compile()
  compile_s = time.perf_counter() - start
  return lambda: jax.block_until_ready(
    compiled(state, inputs, queries)
  ), compile_s


def hf_encoder(
  hf_model,
  cfg,
  ids,
  video,
  image,
  video_grid,
  image_grid,
  n_queries,
  device,
  dtype,
):
  import torch

  types = np.zeros_like(ids)
  types[ids == cfg.image_token_id] = 1
  types[ids == cfg.video_token_id] = 2
  t = lambda a: torch.from_numpy(a).to(device)
  kw = dict(
    input_ids=t(ids)[None],
    mm_token_type_ids=t(types)[None],
    pixel_values=t(image).to(dtype),
    image_grid_thw=torch.tensor([image_grid], device=device),
    pixel_values_videos=t(video).to(dtype),
    video_grid_thw=torch.tensor([video_grid], device=device),
    second_per_grid_ts=torch.ones(1, device=device),
  )
  queries = torch.zeros(
    n_queries, cfg.text.hidden_size, dtype=dtype, device=device
  )
  q_mask = (kw["input_ids"] == cfg.query_token_id)[..., None]

  def run():
    # The reference's patched forward, with the learnable-query hook
    # restated: scatter visual features, then the queries, then decode.
    with torch.no_grad():
      embeds = hf_model.get_input_embeddings()(kw["input_ids"])
      img = torch.cat(
        hf_model.get_image_features(
          kw["pixel_values"], kw["image_grid_thw"]
        ).pooler_output
      )
      vid = torch.cat(
        hf_model.get_video_features(
          kw["pixel_values_videos"], kw["video_grid_thw"]
        ).pooler_output
      )
      ids_t = kw["input_ids"]
      embeds = embeds.masked_scatter(
        (ids_t == cfg.image_token_id)[..., None], img.to(embeds.dtype)
      )
      embeds = embeds.masked_scatter(
        (ids_t == cfg.video_token_id)[..., None], vid.to(embeds.dtype)
      )
      embeds = embeds.masked_scatter(q_mask.expand_as(embeds), queries)
      pos, _ = hf_model.get_rope_index(
        ids_t,
        kw["mm_token_type_ids"],
        image_grid_thw=kw["image_grid_thw"],
        video_grid_thw=kw["video_grid_thw"],
        second_per_grid_ts=kw["second_per_grid_ts"],
      )
      out = hf_model.language_model(inputs_embeds=embeds, position_ids=pos)
      if device != "cpu":
        torch.cuda.synchronize()
      return out.last_hidden_state

  return run


def median_time(fn, iters):
  fn()  # warm-up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--case", default="auto", choices=["auto", *CASES])
  args = parser.parse_args()
  on_gpu = jax.default_backend() == "gpu"
  case = args.case if args.case != "auto" else ("3b" if on_gpu else "tiny")
  variant, video_grid, image_grid, n_queries, n_text = CASES[case]
  dtype = jnp.bfloat16 if case == "3b" else jnp.float32
  cfg = Qwen25VLConfig.from_variant(variant, dtype=dtype, param_dtype=dtype)
  if on_gpu:
    cfg = cfg.replace(attention=None)  # cuDNN flash attention when usable
  ids, video, image = build_prompt(
    cfg, video_grid, image_grid, n_queries, n_text
  )
  print(
    f"case {case}: {jax.devices()[0].device_kind}, {ids.size} tokens, "
    f"{video.shape[0] + image.shape[0]} patches, dtype "
    f"{jnp.dtype(dtype).name}"
  )

  hf_model, torch_device = None, None
  try:
    import torch
    from transformers import Qwen2_5_VLModel

    from kiwi_jax.converters import qwen2_5_vl as conv

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    if case == "3b" and torch_device == "cpu":
      raise ImportError("no CUDA torch for the 3B comparison")
    torch_dtype = torch.bfloat16 if case == "3b" else torch.float32
    torch.manual_seed(0)
    hf_model = (
      Qwen2_5_VLModel(conv.to_hf_config(cfg))
      .to(torch_device, torch_dtype)
      .eval()
    )
  except ImportError as e:
    print(f"transformers side skipped: {e}")

  if hf_model is not None:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
      path = pathlib.Path(tmp) / "model.safetensors"
      save_file(
        {
          k: v.detach().cpu().contiguous()
          for k, v in hf_model.state_dict().items()
        },
        str(path),
      )
      model = conv.load_qwen2_5_vl(path, cfg)
  else:
    model = nnx.jit(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))()

  run_jax, compile_s = jax_encoder(
    model, cfg, ids, video, image, video_grid, image_grid, n_queries, dtype
  )
  jax_s = median_time(run_jax, args.iters)
  print(f"jax          {jax_s * 1e3:9.2f} ms   (compile {compile_s:.1f} s)")
  if hf_model is not None:
    run_hf = hf_encoder(
      hf_model,
      cfg,
      ids,
      video,
      image,
      video_grid,
      image_grid,
      n_queries,
      torch_device,
      next(hf_model.parameters()).dtype,
    )
    hf_s = median_time(run_hf, args.iters)
    print(f"transformers {hf_s * 1e3:9.2f} ms   ({torch_device})")
    print(f"speedup jax / transformers: {hf_s / jax_s:.2f}x")


if __name__ == "__main__":
  main()
