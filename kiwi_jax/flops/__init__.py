"""Model FLOPs of kiwi_jax programs: one formula for the trainer's MFU, the
benches and the plan.

Start here:

* :func:`dit_flops`, :func:`qwen_flops` and :func:`kiwi_flops` give the
  matmul FLOPs of the Wan DiT, Qwen2.5-VL and a whole Kiwi-Edit training
  micro-step from configs and shapes (module docstrings of
  :mod:`~kiwi_jax.flops.dit` and :mod:`~kiwi_jax.flops.qwen` spell out
  the formulas).
* The result, a :class:`FlopCount`, has ``forward``; ``train`` = forward +
  backward, where the backward of each product costs one forward per
  operand that needs a gradient (2x for a trained weight on the gradient
  path, 1x for a frozen weight that passes gradients on or a trained one
  whose input needs none, 0x off the gradient path; see
  :mod:`~kiwi_jax.flops.terms`); and ``hardware_train``, which adds the
  forward products the remat policy recomputes. "Model FLOPs" (``train``)
  exclude that recompute, as the MFU convention does.
* :func:`jaxpr_matmul_flops` counts the matmul FLOPs of any function from
  its jaxpr (scan bodies times their length); :func:`xla_flops` reads
  XLA's count of a compiled program and :func:`scan_corrected_xla_flops`
  adds back the scan iterations XLA counts only once.
* :func:`peak_flops_per_chip` is the chip's peak bf16 FLOP/s.

Only matmuls count (dense and attention products, convolutions in the
jaxpr counter); elementwise work is left out, which is why XLA's own count
runs slightly higher. ``tests/test_flops.py`` checks the formulas against
the jaxpr count exactly and against XLA on an unrolled tiny DiT.
"""

from kiwi_jax.flops.counting import (
  count_jaxpr,
  jaxpr_matmul_flops,
  scan_corrected_xla_flops,
  xla_flops,
)
from kiwi_jax.flops.dit import add_dit_terms, dit_flops, dit_tokens
from kiwi_jax.flops.kiwi import kiwi_flops
from kiwi_jax.flops.peak import PEAK_BF16_FLOPS, peak_flops_per_chip
from kiwi_jax.flops.qwen import add_connector_terms, add_qwen_terms, qwen_flops
from kiwi_jax.flops.terms import (
  FlopCount,
  MatmulTerm,
  TermBuilder,
  nothing_trained,
  recompute_filter,
  trained_by_regex,
)

__all__ = [
  "FlopCount",
  "MatmulTerm",
  "PEAK_BF16_FLOPS",
  "TermBuilder",
  "add_connector_terms",
  "add_dit_terms",
  "add_qwen_terms",
  "count_jaxpr",
  "dit_flops",
  "dit_tokens",
  "jaxpr_matmul_flops",
  "kiwi_flops",
  "nothing_trained",
  "peak_flops_per_chip",
  "qwen_flops",
  "recompute_filter",
  "scan_corrected_xla_flops",
  "trained_by_regex",
  "xla_flops",
]
