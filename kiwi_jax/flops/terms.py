"""Matmul terms and their forward, backward and recompute FLOPs.

A model's cost is a list of :class:`MatmulTerm`: one matrix product (or a
family of identical ones), its forward FLOPs (``2 * M * N * K``: one
multiply and one add per product term) and whether each operand needs a
gradient. The backward pass of ``y = a @ b`` computes ``da = dy @ b^T``
when ``a`` needs a gradient and ``db = a^T @ dy`` when ``b`` does, each as
costly as the forward product, so

  backward(term) = forward(term) * (lhs_grad + rhs_grad).

This one rule covers every case the trainer meets:

* a trained weight on a gradient path: 2x forward (the usual "6N");
* a trained weight whose input needs no gradient (the patch embedding of
  the latents, the first projection of a timestep): 1x (only ``dW``);
* a frozen weight on a gradient path (the frozen DiT of stage 1, which
  still passes gradients back to the connector): 1x (only ``dx``);
* a frozen part no gradient reaches (the vision tower): 0x;
* activation x activation products (attention ``Q K^T`` and ``P V``):
  each side that needs a gradient costs one forward.

Elementwise work (norms, softmax, RoPE, GELU, modulation, residual adds,
bias adds) is not counted: it is small next to the matmuls and is not part
of the MFU convention.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class MatmulTerm:
  """One family of identical matrix products.

  Attributes:
    name: the weight's parameter path (``dit/blocks/self_attn/q/kernel``)
      or, for activation products, a descriptive path
      (``dit/blocks/self_attn/scores``).
    forward: forward FLOPs of the family (all layers, all samples).
    lhs_grad: whether the left operand (the activation) needs a gradient.
    rhs_grad: whether the right operand (weight or second activation) does.
    remat: whether the backward pass recomputes this product (its block is
      rematerialised and its output is not saved).
  """

  name: str
  forward: float
  lhs_grad: bool = False
  rhs_grad: bool = False
  remat: bool = False

  @property
  def backward(self) -> float:
    return self.forward * (int(self.lhs_grad) + int(self.rhs_grad))

  @property
  def recompute(self) -> float:
    """Forward FLOPs redone by rematerialisation (0 off the gradient
    path: no residual of that product is ever needed)."""
    on_path = self.lhs_grad or self.rhs_grad
    return self.forward if self.remat and on_path else 0.0


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """The matmul FLOPs of one program, split by term.

  ``model`` figures exclude rematerialisation (the MFU convention: the
  work the model needs, however the implementation schedules it);
  ``hardware_train`` adds the recomputed forward products.
  """

  terms: tuple[MatmulTerm, ...] = ()

  @property
  def forward(self) -> float:
    return sum(t.forward for t in self.terms)

  @property
  def backward(self) -> float:
    return sum(t.backward for t in self.terms)

  @property
  def train(self) -> float:
    """Model FLOPs of forward + backward (no recompute)."""
    return self.forward + self.backward

  @property
  def recompute(self) -> float:
    return sum(t.recompute for t in self.terms)

  @property
  def hardware_train(self) -> float:
    """FLOPs the hardware runs for forward + backward with remat."""
    return self.train + self.recompute

  def __add__(self, other: FlopCount) -> FlopCount:
    return FlopCount(merge_terms(self.terms + other.terms))

  def by_prefix(self, prefix: str) -> FlopCount:
    """The terms whose name starts with ``prefix`` (e.g. ``"dit/"``)."""
    return FlopCount(tuple(t for t in self.terms if t.name.startswith(prefix)))

  def as_dict(self) -> dict[str, float]:
    """The headline figures, for JSON."""
    return {
      "forward": self.forward,
      "backward": self.backward,
      "train": self.train,
      "recompute": self.recompute,
      "hardware_train": self.hardware_train,
    }


def merge_terms(terms: Iterable[MatmulTerm]) -> tuple[MatmulTerm, ...]:
  """Sums terms that differ only in ``forward`` (e.g. the same product in
  every layer), keeping the first-seen order."""
  merged: dict[tuple, MatmulTerm] = {}
  for t in terms:
    key = (t.name, t.lhs_grad, t.rhs_grad, t.remat)
    if key in merged:
      merged[key] = dataclasses.replace(
        merged[key], forward=merged[key].forward + t.forward
      )
    else:
      merged[key] = t
  return tuple(merged.values())


Trained = Callable[[str], bool]


def trained_by_regex(
  trainable: Sequence[str] = (r".*",), frozen: Sequence[str] = ()
) -> Trained:
  """``name -> bool`` with ``train_state.trainable_filter``'s semantics:
  a parameter trains when a ``trainable`` regex ``re.search``-matches its
  path and no ``frozen`` regex does."""
  trainable, frozen = tuple(trainable), tuple(frozen)

  def trained(name: str) -> bool:
    return any(re.search(p, name) for p in trainable) and not any(
      re.search(p, name) for p in frozen
    )

  return trained


ATTENTION_PRODUCTS = ("/scores", "/values")


def recompute_filter(policy: str) -> Callable[[str], bool]:
  """Which products of a block under a remat policy the backward recomputes.

  ``"none"`` and ``"dots"`` recompute no product (``dots`` saves every
  matmul output); ``"dots_no_batch"`` saves the weight products and
  recomputes the attention products (they have batch dimensions);
  ``"full"`` recomputes everything. The name-based policies
  (``save_attention``, ``save_qkv_attention``, ``save_block_io``) are
  counted as ``"full"``: an upper bound, since the backward of an
  attention whose output alone is saved still needs its probabilities.
  """
  if policy in ("none", "dots"):
    return lambda name: False
  if policy == "dots_no_batch":
    return lambda name: name.endswith(ATTENTION_PRODUCTS)
  return lambda name: True


def nothing_trained(name: str) -> bool:
  del name
  return False


class TermBuilder:
  """Collects terms while following which activations need gradients.

  Args:
    trained: which parameter paths train.

  Attributes:
    recomputed: ``name -> bool``, whether a product added now is
      recomputed in the backward pass (set it around a rematerialised
      block, e.g. with :func:`recompute_filter`).
  """

  def __init__(self, trained: Trained):
    self.trained = trained
    self.recomputed: Callable[[str], bool] = lambda name: False
    self.terms: list[MatmulTerm] = []

  def dense(
    self,
    path: str,
    rows: int,
    fan_in: int,
    fan_out: int,
    input_grad: bool,
    lora_rank: int = 0,
  ) -> bool:
    """``rows x fan_in @ fan_in x fan_out`` with weight ``path/kernel``
    (and a LoRA ``path/lora_a``, ``path/lora_b`` of ``lora_rank``).

    Returns:
      whether the output needs a gradient.
    """
    kernel = self.trained(f"{path}/kernel")
    self._add(
      f"{path}/kernel", 2.0 * rows * fan_in * fan_out, input_grad, kernel
    )
    out_grad = input_grad or kernel
    if lora_rank:
      a = self.trained(f"{path}/lora_a")
      b = self.trained(f"{path}/lora_b")
      self._add(
        f"{path}/lora_a", 2.0 * rows * fan_in * lora_rank, input_grad, a
      )
      self._add(
        f"{path}/lora_b", 2.0 * rows * lora_rank * fan_out, input_grad or a, b
      )
      out_grad = out_grad or a or b
    return out_grad

  def attention(
    self,
    path: str,
    batch_heads: int,
    pairs: float,
    head_dim: int,
    q_grad: bool,
    k_grad: bool,
    v_grad: bool,
  ) -> bool:
    """``Q K^T`` and ``P V`` over ``pairs`` (query, key) pairs per head:
    ``2 * batch_heads * pairs * head_dim`` FLOPs each (``pairs`` is
    ``T * S`` for dense attention; fewer for windows or causal masks).

    Returns:
      whether the output needs a gradient.
    """
    flops = 2.0 * batch_heads * float(pairs) * head_dim
    probs_grad = q_grad or k_grad
    self._add(f"{path}/scores", flops, q_grad, k_grad)
    self._add(f"{path}/values", flops, probs_grad, v_grad)
    return probs_grad or v_grad

  def _add(
    self, name: str, flops: float, lhs_grad: bool, rhs_grad: bool
  ) -> None:
    if flops:
      self.terms.append(
        MatmulTerm(
          name, flops, bool(lhs_grad), bool(rhs_grad), self.recomputed(name)
        )
      )

  def count(self) -> FlopCount:
    return FlopCount(merge_terms(self.terms))


__all__ = [
  "FlopCount",
  "MatmulTerm",
  "TermBuilder",
  "merge_terms",
  "nothing_trained",
  "recompute_filter",
  "trained_by_regex",
]
