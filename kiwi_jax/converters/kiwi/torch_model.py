"""A faithful PyTorch restatement of the Kiwi-Edit forward (for checks).

Stock parts are the library models (diffusers ``WanTransformer3DModel``,
transformers ``Qwen2_5_VLModel``); the Kiwi pieces are restated from the
reference, not from kiwi_jax:

* queries replace the ``<|object_ref_start|>`` embeddings in order (the
  patched ``Qwen2_5_VLModel.forward``'s ``masked_scatter``; here a forward
  hook on ``embed_tokens``);
* ``hidden[:, -N:]`` readout, ``connetor``; in reference mode the tokens
  strictly between the last ``<|vision_start|>`` and the next
  ``<|vision_end|>`` through ``ref_connector``, prepended
  (``QwenVLMLLMEncoder.forward``, ``diffsynth/models/mllm_encoder.py``);
* ``KiwiEditPipeline._model_forward`` (``utils/convert_diffusers/
  pipeline_kiwi_edit.py``): float64 cos-first sinusoid, no
  ``text_embedder``, ``x + sigma * source_embedder(src)``, ref tokens
  appended (or prepended with ``ref_pad_first``) with the RoPE table laid
  frame-major over ``f + 1`` frames, head on ``temb``, ref tokens dropped,
  unpatchify ``(pt ph pw c)``.

Used by ``python -m converters.convert verify`` and by the tests.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from kiwi_jax.converters.kiwi import names
from kiwi_jax.converters.qwen2_5_vl import to_hf_config as hf_qwen_config


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32)))


def _mlp(weights: Mapping[str, np.ndarray], prefix: str) -> nn.Sequential:
  w0, w2 = weights[f"{prefix}.0.weight"], weights[f"{prefix}.2.weight"]
  mlp = nn.Sequential(
    nn.Linear(w0.shape[1], w0.shape[0]),
    nn.GELU(approximate="tanh"),
    nn.Linear(w2.shape[1], w2.shape[0]),
  )
  with torch.no_grad():
    for i in (0, 2):
      mlp[i].weight.copy_(_t(weights[f"{prefix}.{i}.weight"]))
      mlp[i].bias.copy_(_t(weights[f"{prefix}.{i}.bias"]))
  return mlp


def _conv(weights, prefix) -> nn.Conv3d:
  w = weights[f"{prefix}.patch_embedding.weight"]
  conv = nn.Conv3d(w.shape[1], w.shape[0], w.shape[2:], stride=w.shape[2:])
  with torch.no_grad():
    conv.weight.copy_(_t(w))
    conv.bias.copy_(_t(weights[f"{prefix}.patch_embedding.bias"]))
  return conv


def canonical_tensors(ckpt, prefix: str) -> dict[str, np.ndarray]:
  """All tensors under ``prefix`` with LoRA factors merged (fp32)."""
  out = {
    k: np.asarray(ckpt.read(k), np.float32)
    for k in ckpt
    if k.startswith(prefix) and ".lora_" not in k
  }
  for k in ckpt:
    if k.startswith(prefix) and k.endswith(".lora_B.weight"):
      target = k[: -len(".lora_B.weight")]
      a = np.asarray(ckpt.read(target + ".lora_A.weight"), np.float32)
      out[target + ".weight"] = (
        out[target + ".weight"] + np.asarray(ckpt.read(k), np.float32) @ a
      )
  return out


class TorchKiwi(nn.Module):
  """Kiwi-Edit's forward in PyTorch from a canonical checkpoint."""

  def __init__(self, ckpt, cfg):
    """``ckpt``: canonical :class:`Checkpoint`; ``cfg``: KiwiEditConfig."""
    super().__init__()
    from diffusers import WanTransformer3DModel
    from transformers import Qwen2_5_VLModel

    from kiwi_jax.converters import wan_dit

    self.cfg = cfg
    dit = canonical_tensors(ckpt, "dit.")
    self.transformer = WanTransformer3DModel(
      **{
        k: v
        for k, v in wan_dit.diffusers_config(cfg.dit).items()
        if not k.startswith("_")
      }
    ).eval()
    sd = {names.dit_to_diffusers(k[4:]): _t(v) for k, v in dit.items()}
    self.transformer.load_state_dict(sd, strict=True)
    self.qwen = Qwen2_5_VLModel(hf_qwen_config(cfg.mllm)).eval()
    qwen = canonical_tensors(ckpt, "qwen.")
    sd = {}
    for k, v in qwen.items():
      k = k[len("qwen.") :]
      sd["language_model." + k[6:] if k.startswith("model.") else k] = _t(v)
    self.qwen.load_state_dict(sd, strict=True)
    mllm = canonical_tensors(ckpt, "mllm.")
    self.queries = {
      m: _t(mllm[f"mllm.{m}_queries"])
      for m in ("image", "video", "ref")
      if f"mllm.{m}_queries" in mllm
    }
    self.connector = _mlp(mllm, "mllm.connector")
    self.ref_connector = (
      _mlp(mllm, "mllm.ref_connector")
      if "mllm.ref_connector.0.weight" in mllm
      else None
    )
    emb = {
      k: np.asarray(ckpt.read(k), np.float32)
      for k in ckpt
      if k.startswith(("vae_condition.", "ref_vae_condition."))
    }
    self.source_embedder = (
      _conv(emb, "vae_condition")
      if "vae_condition.patch_embedding.weight" in emb
      else None
    )
    self.ref_embedder = (
      _conv(emb, "ref_vae_condition")
      if "ref_vae_condition.patch_embedding.weight" in emb
      else None
    )

  # -- MLLM side (QwenVLMLLMEncoder.forward).

  @torch.no_grad()
  def hidden_states(
    self, input_ids: torch.Tensor, queries: torch.Tensor, **qwen_kwargs
  ) -> torch.Tensor:
    qid = self.cfg.mllm.query_token_id

    def replace(module, args, out):
      mask = args[0] == qid
      out = out.clone()
      out[mask] = queries.to(out.dtype).repeat(out.shape[0], 1)
      return out

    handle = self.qwen.get_input_embeddings().register_forward_hook(replace)
    try:
      out = self.qwen(
        input_ids=input_ids, output_hidden_states=True, **qwen_kwargs
      )
    finally:
      handle.remove()
    return out.hidden_states[-1]

  @torch.no_grad()
  def encode(
    self, input_ids: torch.Tensor, mode: str, **qwen_kwargs
  ) -> torch.Tensor:
    """context float[1, L, dim] for one unpadded prompt."""
    key = "ref" if mode == "reference" else mode
    q = self.queries[key]
    # ``inputs.to(device, dtype=torch.bfloat16)``: the pixels always reach
    # the vision tower bf16-rounded (it casts them back to its dtype).
    qwen_kwargs = {
      k: (v.to(torch.bfloat16) if k.startswith("pixel_values") else v)
      for k, v in qwen_kwargs.items()
    }
    hidden = self.hidden_states(input_ids, q, **qwen_kwargs)
    ctx = self.connector(hidden[:, -q.shape[0] :, :])
    if mode != "reference":
      return ctx
    ids = input_ids[0]
    mllm = self.cfg.mllm
    start = (ids == mllm.vision_start_token_id).nonzero()[-1, 0]
    end = start + (ids[start:] == mllm.vision_end_token_id).nonzero()[0, 0]
    ref = self.ref_connector(hidden[:, start + 1 : end, :])
    return torch.cat([ref, ctx], dim=1)

  # -- DiT side (KiwiEditPipeline._model_forward).

  def _rope(self, f, h, w):
    rope = self.transformer.rope
    sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
    out = []
    for table in (rope.freqs_cos, rope.freqs_sin):
      t_, h_, w_ = table.split(sizes, dim=1)
      full = torch.cat(
        [
          t_[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
          h_[:h].view(1, h, 1, -1).expand(f, h, w, -1),
          w_[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        -1,
      )
      out.append(full.reshape(1, f * h * w, 1, -1))
    return tuple(out)

  @torch.no_grad()
  def velocity(
    self,
    latents,
    timestep,
    context,
    source=None,
    sigma=None,
    ref=None,
    ref_pad_first=False,
  ) -> torch.Tensor:
    """latents float[B, C, F, H, W] (torch layout) -> velocity, same shape."""
    t = self.transformer
    half = t.config.freq_dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    arg = timestep.double()[:, None] * freqs[None]
    sinus = torch.cat([torch.cos(arg), torch.sin(arg)], 1).float()
    temb = t.condition_embedder.time_embedder(sinus)
    t_mod = t.condition_embedder.time_proj(torch.nn.functional.silu(temb))
    t_mod = t_mod.unflatten(1, (6, -1))
    x = t.patch_embedding(latents)
    if source is not None:
      x = x + self.source_embedder(source) * sigma.view(-1, 1, 1, 1, 1)
    f, h, w = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    rope = self._rope(f, h, w)
    n_ref = 0
    if ref is not None:
      r = self.ref_embedder(ref)
      rope = self._rope(f + r.shape[2], h, w)
      r = r.flatten(2).transpose(1, 2)
      n_ref = r.shape[1]
      x = torch.cat([r, x] if ref_pad_first else [x, r], dim=1)
    for block in t.blocks:
      x = block(x, context, t_mod, rope)
    shift, scale = (t.scale_shift_table + temb[:, None]).chunk(2, dim=1)
    x = (t.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = t.proj_out(x)
    if n_ref:
      x = x[:, n_ref:] if ref_pad_first else x[:, :-n_ref]
    pt, ph, pw = t.config.patch_size
    b = x.shape[0]
    x = x.reshape(b, f, h, w, pt, ph, pw, -1)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(
      b, -1, f * pt, h * ph, w * pw
    )
