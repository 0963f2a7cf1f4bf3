"""diffusers' ``WanTransformer3DModel`` forward, timed per attention
backend (the infer section's baseline).

Built from ``kiwi_jax.converters.wan_dit.diffusers_config`` on the GPU with random
weights and cast as ``from_pretrained(torch_dtype=torch.bfloat16)`` would
(bf16, except the model's ``_keep_in_fp32_modules``). Each backend of
``CANDIDATES`` that diffusers and this torch accept is warmed up and timed
with ``torch.cuda.synchronize``; the fastest is the baseline.
"""

from __future__ import annotations

import time

from bench.suite import common

# diffusers attention backends to try (``set_attention_backend``): torch's
# SDPA with its own choice, then pinned to cuDNN, flash and the
# memory-efficient kernel. ``flash``/``sage`` need packages the GPU machine
# lacks; a backend that fails is recorded and skipped.
CANDIDATES = {
  "cuda": (
    "native",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "flash",
  ),
  "cpu": ("native",),
}


def build(cfg, device):
  import torch
  from diffusers import WanTransformer3DModel

  from kiwi_jax.converters import wan_dit

  config = {
    k: v
    for k, v in wan_dit.diffusers_config(cfg).items()
    if not k.startswith("_")
  }
  torch.manual_seed(0)
  with torch.device(device):
    model = WanTransformer3DModel(**config)
  model = model.to(torch.bfloat16)
  # pylint: disable-next=protected-access
  keep = tuple(model._keep_in_fp32_modules or ())
  for name, module in model.named_modules():
    if name and any(k in name for k in keep):
      module.float()
  return model.eval().requires_grad_(False)


def time_forward(
  cfg, inputs, repeats: int, deadline: common.Deadline, rec: common.Recorder
) -> dict:
  """Times the forward per backend; records under ``diffusers``."""
  import diffusers
  import torch

  device = "cuda" if torch.cuda.is_available() else "cpu"
  entry = {
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "device": device,
    "backends": {},
  }
  rec.set(diffusers=entry)
  try:
    begin = time.perf_counter()
    model = build(cfg, device)
    entry["build_s"] = time.perf_counter() - begin
  except Exception as error:  # noqa: BLE001
    entry["error"] = common.error_text(error)
    rec.set(diffusers=entry)
    return entry
  latents = torch.from_numpy(inputs["latents"].astype("float32"))
  hidden = (
    latents.permute(0, 4, 1, 2, 3).contiguous().to(device, torch.bfloat16)
  )
  text = torch.from_numpy(inputs["text"].astype("float32")).to(
    device, torch.bfloat16
  )
  timestep = torch.from_numpy(inputs["timestep"]).to(device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def forward():
    with torch.inference_mode():
      model(hidden, timestep, text, return_dict=False)
    sync()

  for backend in CANDIDATES[device]:
    if not deadline.allows(10):
      entry["backends"][backend] = {"error": "skipped: out of time"}
      break
    try:
      model.set_attention_backend(backend)
      entry["backends"][backend] = common.time_calls(forward, repeats, deadline)
    except Exception as error:  # noqa: BLE001
      entry["backends"][backend] = {"error": common.error_text(error)}
    rec.set(diffusers=entry)
  if device == "cuda":
    entry["peak_gb"] = torch.cuda.max_memory_allocated() / common.GB
  timed = {k: v for k, v in entry["backends"].items() if "median_s" in v}
  if timed:
    entry["best_backend"] = min(timed, key=lambda k: timed[k]["median_s"])
  rec.set(diffusers=entry)
  return entry
