"""Parity of kiwi_jax Qwen25VL with transformers' Qwen2_5_VLModel.

fp32, random weights (norm weights and biases included), converted through
kiwi_jax/converters/qwen2_5_vl.py from safetensors files in all three key layouts.
Every hidden state must agree to 1e-4.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from kiwi_jax import sharding  # noqa: E402
from kiwi_jax.converters import qwen2_5_vl as conv  # noqa: E402
from kiwi_jax.models.mllm import Qwen25VLConfig  # noqa: E402
from kiwi_jax.models.mllm.rope_index import mrope_position_ids  # noqa: E402
from kiwi_jax.models.mllm.vision import vision_metadata  # noqa: E402

pytestmark = pytest.mark.torch

CFG = Qwen25VLConfig.from_variant("tiny")
TOL = 1e-4
IMAGE_GRID = (1, 12, 20)  # llm grid 6 x 10: 2 x 3 windows, partial ones
VIDEO_GRID = (2, 8, 12)  # 2 temporal grids, llm grid 4 x 6


@pytest.fixture(scope="module")
def hf_model():
  from transformers import Qwen2_5_VLModel

  torch.manual_seed(0)
  model = Qwen2_5_VLModel(conv.to_hf_config(CFG)).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_norm = "norm" in name or "ln_q" in name
      p.copy_(1.0 + 0.3 * noise if is_norm else 0.1 * noise)
  return model


def _relayout(state, layout):
  out = {}
  for k, v in state.items():
    if layout == "hub":
      k = k.replace("language_model.", "model.", 1)
    elif layout == "v5":
      k = "model." + k
    out[k] = v.contiguous()
  return out


@pytest.fixture(scope="module")
def jax_model(hf_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("qwen") / "hub.safetensors"
  save_file(_relayout(hf_model.state_dict(), "hub"), str(path))
  return conv.load_qwen2_5_vl(path, CFG)


def _visual(grid, kind, rng):
  t, h, w = grid
  n_tokens = t * h * w // 4
  ids = (
    [CFG.vision_start_token_id] + [kind] * n_tokens + [CFG.vision_end_token_id]
  )
  pixels = rng.standard_normal((t * h * w, 1176)).astype(np.float32)
  return ids, pixels


def _text(n, rng):
  return list(rng.integers(14, CFG.text.vocab_size, size=n))


def build_prompt(parts, seed=0):
  """parts: list of 'text:N', 'image', 'video', 'query:N' in prompt order."""
  rng = np.random.default_rng(seed)
  ids, images, videos = [], [], []
  for part in parts:
    if part == "image":
      piece, pix = _visual(IMAGE_GRID, CFG.image_token_id, rng)
      images.append((IMAGE_GRID, pix))
    elif part == "video":
      piece, pix = _visual(VIDEO_GRID, CFG.video_token_id, rng)
      videos.append((VIDEO_GRID, pix))
    elif part.startswith("query:"):
      piece = [CFG.query_token_id] * int(part[6:])
    else:
      piece = _text(int(part[5:]), rng)
    ids += piece
  return np.asarray(ids, np.int64), images, videos


def run_hf(model, ids, images, videos):
  kw = {}
  type_ids = np.zeros_like(ids)
  type_ids[ids == CFG.image_token_id] = 1
  type_ids[ids == CFG.video_token_id] = 2
  if images:
    kw["pixel_values"] = torch.from_numpy(
      np.concatenate([p for _, p in images])
    )
    kw["image_grid_thw"] = torch.tensor([g for g, _ in images])
  if videos:
    kw["pixel_values_videos"] = torch.from_numpy(
      np.concatenate([p for _, p in videos])
    )
    kw["video_grid_thw"] = torch.tensor([g for g, _ in videos])
    kw["second_per_grid_ts"] = torch.ones(len(videos))
  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(ids)[None],
      mm_token_type_ids=torch.from_numpy(type_ids)[None],
      output_hidden_states=True,
      **kw,
    )
  return out


def jax_inputs(ids, images, videos):
  grids = [g for g, _ in images] + [g for g, _ in videos]
  pos = mrope_position_ids(
    ids,
    image_grid_thw=[g for g, _ in images],
    video_grid_thw=[g for g, _ in videos],
    image_token_id=CFG.image_token_id,
    video_token_id=CFG.video_token_id,
    vision_start_token_id=CFG.vision_start_token_id,
  )
  kw = {}
  if grids:
    pix = np.concatenate([p for _, p in images] + [p for _, p in videos])
    meta = vision_metadata(grids, CFG.vision)
    pix = np.pad(pix, ((0, meta["positions"].shape[0] - pix.shape[0]), (0, 0)))
    kw["pixel_values"] = jnp.asarray(pix)[None]
    kw["vision_meta"] = {k: jnp.asarray(v)[None] for k, v in meta.items()}
  return jnp.asarray(ids)[None], jnp.asarray(pos)[:, None], kw


@nnx.jit(static_argnames="return_all_hidden_states")
def forward(
  model, input_ids, position_ids, return_all_hidden_states=True, **kw
):
  return model(
    input_ids,
    position_ids,
    return_all_hidden_states=return_all_hidden_states,
    **kw,
  )


def assert_hidden_close(hf_out, jax_out):
  hf_hidden = [h.numpy() for h in hf_out.hidden_states]
  assert len(hf_hidden) == jax_out.hidden_states.shape[0]
  np.testing.assert_array_equal(hf_hidden[-1], hf_out.last_hidden_state.numpy())
  for i, ref in enumerate(hf_hidden):
    err = np.max(np.abs(np.asarray(jax_out.hidden_states[i]) - ref))
    assert err <= TOL, f"hidden state {i}: max abs error {err}"


@pytest.mark.parametrize(
  "parts",
  [
    ("text:5", "image", "text:7"),
    ("text:4", "video", "text:6"),
    ("text:3", "video", "text:5", "image", "text:4"),
  ],
  ids=["image", "video", "video_text_image"],
)
def test_hidden_states_match_transformers(hf_model, jax_model, parts):
  ids, images, videos = build_prompt(parts)
  hf_out = run_hf(hf_model, ids, images, videos)
  input_ids, pos, kw = jax_inputs(ids, images, videos)
  out = forward(jax_model, input_ids, pos, **kw)
  assert_hidden_close(hf_out, out)


def test_query_hook_matches_patched_reference_forward(hf_model, jax_model):
  """The reference's patched forward, restated: after the visual scatter,
  ``inputs_embeds.masked_scatter(ids == <|object_ref_start|>, queries)``,
  then the decoder with the usual M-RoPE positions."""
  n_q = 6
  ids, images, videos = build_prompt(
    ("text:3", "video", "text:4", "image", f"query:{n_q}", "text:2"), 3
  )
  queries = (
    np.random.default_rng(7)
    .standard_normal((n_q, CFG.text.hidden_size))
    .astype(np.float32)
  )
  t_ids = torch.from_numpy(ids)[None]
  type_ids = np.zeros_like(ids)
  type_ids[ids == CFG.image_token_id] = 1
  type_ids[ids == CFG.video_token_id] = 2
  with torch.no_grad():
    embeds = hf_model.get_input_embeddings()(t_ids)
    img = torch.cat(
      hf_model.get_image_features(
        torch.from_numpy(images[0][1]), torch.tensor([IMAGE_GRID])
      ).pooler_output
    )
    vid = torch.cat(
      hf_model.get_video_features(
        torch.from_numpy(videos[0][1]), torch.tensor([VIDEO_GRID])
      ).pooler_output
    )
    embeds = embeds.masked_scatter(
      (t_ids == CFG.image_token_id)[..., None], img
    )
    embeds = embeds.masked_scatter(
      (t_ids == CFG.video_token_id)[..., None], vid
    )
    q_mask = (t_ids == CFG.query_token_id)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(q_mask, torch.from_numpy(queries)[None])
    pos, _ = hf_model.get_rope_index(
      t_ids,
      torch.from_numpy(type_ids)[None],
      image_grid_thw=torch.tensor([IMAGE_GRID]),
      video_grid_thw=torch.tensor([VIDEO_GRID]),
      second_per_grid_ts=torch.ones(1),
    )
    ref = hf_model.language_model(
      inputs_embeds=embeds, position_ids=pos, output_hidden_states=True
    )
  input_ids, jpos, kw = jax_inputs(ids, images, videos)
  np.testing.assert_array_equal(np.asarray(jpos), pos.numpy())
  out = forward(jax_model, input_ids, jpos, queries=jnp.asarray(queries), **kw)
  assert_hidden_close(ref, out)


def test_layouts_load_the_same_and_export_round_trips(
  hf_model, jax_model, tmp_path
):
  import jax

  from kiwi_jax.converters.checkpoint_io import open_checkpoint

  ref_state = nnx.state(jax_model)
  for layout in ("v5", "base"):
    path = tmp_path / f"{layout}.safetensors"
    save_file(_relayout(hf_model.state_dict(), layout), str(path))
    assert conv.detect_layout(open_checkpoint(path).keys()) == layout
    state = nnx.state(conv.load_qwen2_5_vl(path, CFG))
    jax.tree.map(np.testing.assert_array_equal, state, ref_state)
  # Straight into shardings on 8 fake devices.
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = conv.load_qwen2_5_vl(path, CFG, mesh=mesh)
  kernel = sharded.language_model.layers[0].mlp.gate_proj.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  jax.tree.map(np.testing.assert_array_equal, nnx.state(sharded), ref_state)
  out = conv.save_qwen2_5_vl(
    jax_model, tmp_path / "export.safetensors", layout="hub"
  )
  exported = open_checkpoint(out)
  hub = _relayout(hf_model.state_dict(), "hub")
  assert set(exported.keys()) == set(hub)
  for key, value in hub.items():
    np.testing.assert_array_equal(exported.read(key), value.numpy())


def test_mismatched_checkpoint_lists_every_problem(hf_model, tmp_path):
  from kiwi_jax.converters.assign import CheckpointMismatchError

  state = _relayout(hf_model.state_dict(), "hub")
  del state["model.norm.weight"]
  state["visual.blocks.0.attn.qkv.bias"] = torch.zeros(5)
  state["model.extra.weight"] = torch.zeros(2)
  path = tmp_path / "bad.safetensors"
  save_file(state, str(path))
  with pytest.raises(CheckpointMismatchError) as err:
    conv.load_qwen2_5_vl(path, CFG)
  msg = str(err.value)
  for key in (
    "model.norm.weight",
    "visual.blocks.0.attn.qkv.bias",
    "model.extra.weight",
  ):
    assert key in msg


def test_chunked_full_attention_matches(hf_model, jax_model, monkeypatch):
  """Long sequences switch the full-attention blocks to query chunks."""
  from kiwi_jax.models.mllm import vision

  monkeypatch.setattr(vision, "_DENSE_LIMIT", 64)
  ids, images, videos = build_prompt(("text:2", "video", "image", "text:3"), 5)
  hf_out = run_hf(hf_model, ids, images, videos)
  input_ids, pos, kw = jax_inputs(ids, images, videos)
  kw["pixel_values"] = jnp.pad(kw["pixel_values"], ((0, 0), (0, 1024), (0, 0)))
  n = kw["pixel_values"].shape[1]
  grids = [g for g, _ in images] + [g for g, _ in videos]
  kw["vision_meta"] = {
    k: jnp.asarray(v)[None]
    for k, v in vision_metadata(grids, CFG.vision, n).items()
  }
  out = forward(jax_model, input_ids, pos, **kw)  # new shape: traced here
  assert_hidden_close(hf_out, out)
