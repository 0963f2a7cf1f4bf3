"""Peak dense bf16 FLOP/s per chip, for MFU and step-time lower bounds.

Vendor figures without sparsity: NVIDIA's data sheets (SXM parts) and
Google Cloud's TPU pages (per chip).
"""

from __future__ import annotations

import jax

# (substring of ``device.device_kind``, lower case) -> FLOP/s. The first
# match wins, so more specific names come first.
PEAK_BF16_FLOPS = (
  ("h200", 989e12),
  ("h100", 989e12),
  ("a100", 312e12),
  ("tpu v5 lite", 197e12),  # v5e
  ("tpu v5e", 197e12),
  ("tpu v5", 459e12),  # v5p reports "TPU v5"
  ("tpu v6", 918e12),  # v6e (Trillium) reports "TPU v6 lite"
  ("tpu v4", 275e12),
)


def peak_flops_per_chip(device: jax.Device | None = None) -> float | None:
  """The peak bf16 FLOP/s of ``device`` (default: the first device), or
  None for a kind not in :data:`PEAK_BF16_FLOPS` (CPUs among them)."""
  device = device or jax.devices()[0]
  kind = str(getattr(device, "device_kind", "")).lower()
  for name, flops in PEAK_BF16_FLOPS:
    if name in kind:
      return flops
  return None


__all__ = ["PEAK_BF16_FLOPS", "peak_flops_per_chip"]
