"""Kiwi's DiT path against a PyTorch restatement of ``model_fn_wan_video``.

The reference below is written from docs/reference.md §3 (DiffSynth's
``model_fn_wan_video`` + ``WanModel`` blocks, ``rope_apply`` in complex
float64, ``ConditionalEmbedder``), reading a Kiwi training checkpoint with the
released key names (``dit.*``, ``vae_condition.patch_embedding.*``,
``ref_vae_condition.patch_embedding.*``, plus ``mllm.*`` tensors the DiT
converter must skip). It goes through the real converter.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.dit import WanDiTConfig

pytestmark = pytest.mark.torch

CFG = WanDiTConfig.from_variant(
  "tiny", num_layers=2, source_condition=True, reference_condition=True
)


def _random_kiwi_state_dict(cfg, seed=0):
  """DiffSynth names and shapes (reference §1.1, 1.7, 7.2), random values."""
  import torch

  gen = torch.Generator().manual_seed(seed)
  d, c = cfg.dim, cfg.in_channels
  pt, ph, pw = cfg.patch_size
  shapes = {
    "patch_embedding.weight": (d, c, pt, ph, pw),
    "patch_embedding.bias": (d,),
    "text_embedding.0.weight": (d, cfg.text_dim),
    "text_embedding.0.bias": (d,),
    "text_embedding.2.weight": (d, d),
    "text_embedding.2.bias": (d,),
    "time_embedding.0.weight": (d, cfg.freq_dim),
    "time_embedding.0.bias": (d,),
    "time_embedding.2.weight": (d, d),
    "time_embedding.2.bias": (d,),
    "time_projection.1.weight": (6 * d, d),
    "time_projection.1.bias": (6 * d,),
    "head.modulation": (1, 2, d),
    "head.head.weight": (cfg.out_patch_features, d),
    "head.head.bias": (cfg.out_patch_features,),
  }
  for i in range(cfg.num_layers):
    p = f"blocks.{i}."
    for attn in ("self_attn", "cross_attn"):
      for proj in "qkvo":
        shapes[f"{p}{attn}.{proj}.weight"] = (d, d)
        shapes[f"{p}{attn}.{proj}.bias"] = (d,)
      shapes[f"{p}{attn}.norm_q.weight"] = (d,)
      shapes[f"{p}{attn}.norm_k.weight"] = (d,)
    shapes.update(
      {
        f"{p}norm3.weight": (d,),
        f"{p}norm3.bias": (d,),
        f"{p}ffn.0.weight": (cfg.ffn_dim, d),
        f"{p}ffn.0.bias": (cfg.ffn_dim,),
        f"{p}ffn.2.weight": (d, cfg.ffn_dim),
        f"{p}ffn.2.bias": (d,),
        f"{p}modulation": (1, 6, d),
      }
    )
  sd = {}
  for key, shape in shapes.items():
    noise = torch.randn(shape, generator=gen) * 0.2
    sd["dit." + key] = noise + 1.0 if "norm" in key else noise
  for cond in ("vae_condition", "ref_vae_condition"):
    sd[f"{cond}.patch_embedding.weight"] = (
      torch.randn((d, c, pt, ph, pw), generator=gen) * 0.2
    )
    sd[f"{cond}.patch_embedding.bias"] = torch.randn((d,), generator=gen)
  sd["mllm.connetor.0.weight"] = torch.randn((d, 8), generator=gen)
  return sd


def _freqs_3d(head_dim, theta=10000.0, n=1024):
  """``precompute_freqs_cis_3d``: complex128 tables per axis (reference §1.3)."""
  import torch

  def table(k):
    inv = 1.0 / theta ** (torch.arange(0, k, 2, dtype=torch.float64) / k)
    angles = torch.outer(torch.arange(n, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)

  dh = head_dim // 3
  return table(head_dim - 2 * dh), table(dh), table(dh)


def _rope_apply(x, freqs, heads):
  import torch

  b, s, _ = x.shape
  xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, heads, -1, 2))
  return torch.view_as_real(xc * freqs).flatten(2).to(x.dtype)


def _reference(sd, cfg, z, t, ctx, z_src, sigma, z_ref, ref_pad_first):
  """Reference §3, steps 0-8, in channel-first PyTorch layouts."""
  import torch
  import torch.nn.functional as F

  sd = {k.removeprefix("dit."): v for k, v in sd.items()}
  d, heads, eps = cfg.dim, cfg.num_heads, cfg.eps

  def lin(x, name):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

  def conv(x, name):
    return F.conv3d(
      x, sd[name + ".weight"], sd[name + ".bias"], stride=cfg.patch_size
    )

  def rms(x, name):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(
      x
    ) * sd[name]

  def attention(q, k, v):
    split = lambda a: a.unflatten(2, (heads, -1)).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).flatten(2)

  half = cfg.freq_dim // 2
  freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
  args = t.to(torch.float64)[:, None] * freqs
  s = torch.cat([torch.cos(args), torch.sin(args)], -1).float()
  t_emb = lin(F.silu(lin(s, "time_embedding.0")), "time_embedding.2")
  t_mod = lin(F.silu(t_emb), "time_projection.1").unflatten(1, (6, d))

  x = conv(z, "patch_embedding")
  x = x + conv(z_src, "vae_condition.patch_embedding") * sigma.view(
    -1, 1, 1, 1, 1
  )
  f, h, w = x.shape[2:]
  x = x.flatten(2).transpose(1, 2)
  r = conv(z_ref, "ref_vae_condition.patch_embedding")
  ref_f = r.shape[2]
  r = r.flatten(2).transpose(1, 2)
  x = torch.cat([r, x] if ref_pad_first else [x, r], dim=1)
  ft, fh, fw = _freqs_3d(d // heads)
  frames = f + ref_f  # the table is laid frame-major over the sequence
  grid = torch.cat(
    [
      ft[:frames].view(frames, 1, 1, -1).expand(frames, h, w, -1),
      fh[:h].view(1, h, 1, -1).expand(frames, h, w, -1),
      fw[:w].view(1, 1, w, -1).expand(frames, h, w, -1),
    ],
    -1,
  )
  grid = grid.reshape(frames * h * w, 1, -1)

  for i in range(cfg.num_layers):
    p = f"blocks.{i}."
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
      sd[p + "modulation"] + t_mod
    ).chunk(6, dim=1)
    y = F.layer_norm(x, (d,), eps=eps) * (1 + scale_msa) + shift_msa
    q = rms(lin(y, p + "self_attn.q"), p + "self_attn.norm_q.weight")
    k = rms(lin(y, p + "self_attn.k"), p + "self_attn.norm_k.weight")
    q, k = _rope_apply(q, grid, heads), _rope_apply(k, grid, heads)
    v = lin(y, p + "self_attn.v")
    x = x + gate_msa * lin(attention(q, k, v), p + "self_attn.o")
    y = F.layer_norm(x, (d,), sd[p + "norm3.weight"], sd[p + "norm3.bias"], eps)
    q = rms(lin(y, p + "cross_attn.q"), p + "cross_attn.norm_q.weight")
    k = rms(lin(ctx, p + "cross_attn.k"), p + "cross_attn.norm_k.weight")
    v = lin(ctx, p + "cross_attn.v")
    x = x + lin(attention(q, k, v), p + "cross_attn.o")
    y = F.layer_norm(x, (d,), eps=eps) * (1 + scale_mlp) + shift_mlp
    ffn = lin(F.gelu(lin(y, p + "ffn.0"), approximate="tanh"), p + "ffn.2")
    x = x + gate_mlp * ffn

  shift, scale = (sd["head.modulation"] + t_emb[:, None]).chunk(2, dim=1)
  x = lin(F.layer_norm(x, (d,), eps=eps) * (1 + scale) + shift, "head.head")
  n_ref = ref_f * h * w
  x = x[:, n_ref:] if ref_pad_first else x[:, : x.shape[1] - n_ref]
  pt, ph, pw = cfg.patch_size
  x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1)
  return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(
    x.shape[0], -1, f * pt, h * ph, w * pw
  )


@nnx.jit
def _velocity(model, latents, timestep, context, source, sigma, ref):
  return model(
    latents,
    timestep,
    context,
    source_latents=source,
    sigma=sigma,
    ref_latents=ref,
  ).velocity


@pytest.mark.parametrize("ref_pad_first", [False, True])
def test_kiwi_path_matches_restatement(tmp_path, ref_pad_first):
  import torch
  from safetensors.torch import save_file

  from kiwi_jax.converters import wan_dit

  sd = _random_kiwi_state_dict(CFG)
  path = tmp_path / "kiwi_stage3.safetensors"
  save_file(sd, str(path))
  cfg = CFG.replace(ref_pad_first=ref_pad_first)
  model = wan_dit.load_wan_dit(path, cfg)

  rng = np.random.default_rng(3)
  b, t, h, w, c = 2, 3, 6, 10, cfg.in_channels
  z = rng.standard_normal((b, t, h, w, c), dtype=np.float32)
  z_src = rng.standard_normal((b, t, h, w, c), dtype=np.float32)
  z_ref = rng.standard_normal((b, 1, h, w, c), dtype=np.float32)
  ctx = rng.standard_normal((b, 5, cfg.dim), dtype=np.float32)
  timestep = np.array([875.0, 12.5], np.float32)
  sigma = np.array([0.875, 0.0125], np.float32)

  to_torch = lambda a: torch.from_numpy(a).permute(0, 4, 1, 2, 3)
  with torch.no_grad():
    want = _reference(
      sd,
      cfg,
      to_torch(z),
      torch.from_numpy(timestep),
      torch.from_numpy(ctx),
      to_torch(z_src),
      torch.from_numpy(sigma),
      to_torch(z_ref),
      ref_pad_first,
    )
  want = want.permute(0, 2, 3, 4, 1).numpy()
  got = np.asarray(
    _velocity(model, *map(jnp.asarray, (z, timestep, ctx, z_src, sigma, z_ref)))
  )
  err = float(np.max(np.abs(got - want)))
  print(f"ref_pad_first={ref_pad_first}: max abs error {err:.2e}")
  assert err <= 1e-4
