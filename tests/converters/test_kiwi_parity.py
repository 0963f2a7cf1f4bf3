"""Converted Kiwi-Edit checkpoints (both released layouts) against a faithful
PyTorch restatement of the Kiwi forward, fp32, max abs error <= 1e-4.

Instruction mode (video edit with source injection) and reference mode
(ref image in the MLLM prompt and ref tokens in the DiT), with and without
``ref_pad_first``. The torch side is built from the fake model's canonical
weights (the truth), not from the converter's view of the files.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kiwi_fakes  # noqa: E402
from flax import nnx  # noqa: E402

from kiwi_jax.converters.checkpoint_io import Checkpoint  # noqa: E402
from kiwi_jax.converters.kiwi import convert as kiwi_conv  # noqa: E402
from kiwi_jax.converters.kiwi import sources as kiwi_sources  # noqa: E402
from kiwi_jax.converters.kiwi.torch_model import TorchKiwi  # noqa: E402
from kiwi_jax.models.kiwi import checkpoint as kiwi_ckpt  # noqa: E402
from kiwi_jax.models.kiwi.config import KiwiEditConfig  # noqa: E402
from kiwi_jax.models.kiwi.model import pure  # noqa: E402
from kiwi_jax.models.mllm.rope_index import mrope_position_ids  # noqa: E402
from kiwi_jax.models.mllm.vision import vision_metadata  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CFG = KiwiEditConfig.from_variant("tiny")
TOL = 1e-4
IMAGE_GRID, VIDEO_GRID = (1, 4, 6), (2, 4, 4)
IM_END, NEWLINE = 2, 40
LATENT_SHAPE = (1, 2, 4, 6, CFG.dit.in_channels)


def dict_checkpoint(tensors):
  index = {
    k: {"shape": v.shape, "dtype": "float32"} for k, v in tensors.items()
  }
  return Checkpoint("truth", index, lambda k, item: tensors[k])


@pytest.fixture(scope="module")
def truth():
  return kiwi_fakes.truth(CFG)


@pytest.fixture(scope="module")
def torch_kiwi(truth):
  return TorchKiwi(dict_checkpoint(truth), CFG)


def prompt(mode, rng):
  """ids, image grids/pixels, video grids/pixels of a Kiwi-style prompt."""
  m = CFG.mllm
  ids = [1, 20, 21, m.vision_start_token_id]
  images, videos = [], []
  if mode == "image":
    ids += [m.image_token_id] * (np.prod(IMAGE_GRID) // 4)
    images.append(IMAGE_GRID)
  else:
    ids += [m.video_token_id] * (np.prod(VIDEO_GRID) // 4)
    videos.append(VIDEO_GRID)
  ids += [m.vision_end_token_id, 30, 31, 32]
  if mode == "reference":
    ids += [m.vision_start_token_id]
    ids += [m.image_token_id] * (np.prod(IMAGE_GRID) // 4)
    ids += [m.vision_end_token_id]
    images.append(IMAGE_GRID)
  ids += [m.query_token_id] * CFG.num_queries(mode) + [IM_END, NEWLINE]
  pix_i = [
    rng.standard_normal((int(np.prod(g)), 1176)).astype(np.float32)
    for g in images
  ]
  pix_v = [
    rng.standard_normal((int(np.prod(g)), 1176)).astype(np.float32)
    for g in videos
  ]
  return np.asarray(ids), images, pix_i, videos, pix_v


def torch_context(tk, mode, ids, images, pix_i, videos, pix_v, pos):
  m = CFG.mllm
  kw = {}
  if images:
    kw["pixel_values"] = torch.from_numpy(np.concatenate(pix_i))
    kw["image_grid_thw"] = torch.tensor(images)
  if videos:
    kw["pixel_values_videos"] = torch.from_numpy(np.concatenate(pix_v))
    kw["video_grid_thw"] = torch.tensor(videos)
    kw["second_per_grid_ts"] = torch.ones(len(videos))
  types = np.zeros_like(ids)
  types[ids == m.image_token_id] = 1
  types[ids == m.video_token_id] = 2
  kw["mm_token_type_ids"] = torch.from_numpy(types)[None]
  kw["position_ids"] = torch.from_numpy(pos.astype(np.int64))[:, None]
  return tk.encode(torch.from_numpy(ids)[None], mode, **kw).numpy()


def jax_inputs(ids, images, pix_i, videos, pix_v, pos):
  grids = list(images) + list(videos)
  meta = vision_metadata(grids, CFG.mllm.vision)
  pix = np.concatenate(pix_i + pix_v)
  # The vision tower takes window-aligned slots: zero rows after the real
  # patches up to the metadata's patch count.
  pix = np.pad(pix, ((0, meta["positions"].shape[0] - pix.shape[0]), (0, 0)))
  return {
    "input_ids": jnp.asarray(ids)[None],
    "position_ids": jnp.asarray(pos)[:, None],
    "pixel_values": jnp.asarray(pix)[None],
    "vision_meta": {k: jnp.asarray(v)[None] for k, v in meta.items()},
  }


_JITTED = {}


def jitted(graphdef, method, **kw):
  """One compiled function per (model structure, method) for the module:
  models converted from different layouts share their compilations."""
  key = (graphdef, method)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(pure(graphdef, method), **kw)
  return _JITTED[key]


def check_model(
  model,
  tk,
  ref_pad_first,
  modes=("video", "reference"),
  encode_modes=("video", "reference"),
  seed=0,
):
  """Runs ``modes`` through the converted model and the torch restatement.

  The context of modes not in ``encode_modes`` comes from torch only (the
  MLLM side does not depend on the DiT's ``ref_pad_first``), which saves
  compilations.
  """
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(model)
  encode = jitted(
    graphdef, "encode_conditions", static_argnames=("mode", "ref_tokens")
  )
  step = jitted(graphdef, "denoise_step")
  latents = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
  source = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
  ref = rng.standard_normal(LATENT_SHAPE[:1] + (1,) + LATENT_SHAPE[2:]).astype(
    np.float32
  )
  t, sigma = np.array([700.0], np.float32), np.array([0.7], np.float32)

  def to_torch(x):
    return torch.from_numpy(np.moveaxis(x, -1, 1).copy())

  errors = {}
  for mode in modes:
    ids, images, pix_i, videos, pix_v = prompt(mode, rng)
    pos = mrope_position_ids(
      ids,
      image_grid_thw=images,
      video_grid_thw=videos,
      image_token_id=CFG.mllm.image_token_id,
      video_token_id=CFG.mllm.video_token_id,
      vision_start_token_id=CFG.mllm.vision_start_token_id,
    )
    n_ref = int(np.prod(IMAGE_GRID) // 4) if mode == "reference" else 0
    want_ctx = torch_context(tk, mode, ids, images, pix_i, videos, pix_v, pos)
    if mode in encode_modes:
      cond = encode(
        state,
        jax_inputs(ids, images, pix_i, videos, pix_v, pos),
        mode=mode,
        ref_tokens=n_ref,
      )
      assert cond.context.shape == want_ctx.shape
      assert bool(jnp.all(cond.mask))
      errors[f"{mode}/context"] = np.abs(
        np.asarray(cond.context) - want_ctx
      ).max()
    kw = dict(source_latents=source, sigma=sigma)
    if mode == "reference":
      kw["ref_latents"] = ref
    vel = step(state, latents, t, jnp.asarray(want_ctx), **kw)
    want = tk.velocity(
      to_torch(latents),
      torch.from_numpy(t),
      torch.from_numpy(want_ctx),
      source=to_torch(source),
      sigma=torch.from_numpy(sigma),
      ref=to_torch(ref) if mode == "reference" else None,
      ref_pad_first=ref_pad_first,
    ).numpy()
    errors[f"{mode}/velocity"] = np.abs(
      np.asarray(vel) - np.moveaxis(want, 1, -1)
    ).max()
    assert np.abs(want).max() > 0.1  # a non-trivial comparison
  print("max abs errors:", errors)
  bad = {k: v for k, v in errors.items() if not v <= TOL}
  assert not bad, f"max abs errors above {TOL}: {errors}"


def test_diffsynth_stage3_merged_lora_matches_torch(
  truth, torch_kiwi, tmp_path
):
  lora = kiwi_fakes.lora_factors(CFG)
  paths = kiwi_fakes.write_diffsynth(truth, lora, CFG, tmp_path / "src")
  sources = kiwi_sources.from_diffsynth(
    **paths, lora="merge", ref_pad_first=False
  )
  out, report = kiwi_conv.convert(sources, tmp_path / "out", CFG)
  assert report["components"]["dit"].startswith(str(paths["kiwi_checkpoint"]))
  assert "LoRA" in report["components"]["qwen"]
  model = kiwi_ckpt.load(out)
  assert model.cfg.modes() == ("image", "video", "reference")
  assert (out / "processor" / "tokenizer.json").is_file()
  check_model(model, torch_kiwi, ref_pad_first=False)


@pytest.mark.parametrize("ref_pad_first", [False, True])
def test_diffusers_layout_matches_torch(
  truth, torch_kiwi, tmp_path, ref_pad_first
):
  root = kiwi_fakes.write_diffusers(truth, CFG, tmp_path / "src", ref_pad_first)
  sources = kiwi_sources.from_diffusers(root)
  assert sources.ref_pad_first is ref_pad_first
  out, _ = kiwi_conv.convert(sources, tmp_path / "out", CFG)
  model = kiwi_ckpt.load(out)
  assert model.cfg.dit.ref_pad_first is ref_pad_first
  if ref_pad_first:
    # Only the DiT differs from the default layout.
    check_model(model, torch_kiwi, True, modes=("reference",), encode_modes=())
  else:
    check_model(model, torch_kiwi, False)
