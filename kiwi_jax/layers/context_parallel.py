"""Context-parallel self-attention over a token axis sharded on the mesh.

When the activations' token axis is sharded (the ``act_seq`` rule, the
``sequence`` mesh axis by default), plain attention under GSPMD gathers the
whole keys and values onto every device and each device materialises logits
for its query block against every key. Two schemes keep the work and the
memory split instead, both through ``shard_map`` (the other mesh axes keep
their roles: batch over ``data``/``fsdp``, heads over ``tensor``):

* ``"ulysses"`` (all-to-all over heads): an all-to-all trades each device's
  token shard of q, k, v for a head shard of the full sequence, attention
  runs locally over the whole sequence on ``heads / sequence`` heads (through
  :func:`kiwi_jax.layers.dot_product_attention`, so any backend kernel is
  used), and a second all-to-all brings the output back to token shards.
  Needs the per-device heads (after ``tensor``) to divide by the sequence
  shards.
* ``"ring"`` (ring over key/value blocks): each device keeps its query block
  and passes its key/value block around the ring with ``lax.ppermute``; the
  partial results are combined with a running max and sum in fp32 (online
  softmax), and each block is further split into key chunks, so no device
  ever holds more than ``[query block, chunk]`` logits per head. Works for
  any head count.

``"auto"`` picks Ulysses where the heads divide and the ring otherwise;
``"none"`` (or a mesh whose token axis is not sharded) means no context
parallelism. Both schemes compute full, unmasked attention (the DiT's
self-attention over video and reference tokens).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.layers.attention import Implementation, dot_product_attention

MODES = ("none", "ulysses", "ring", "auto")

# Logical names of q/k/v/output activations: [batch, tokens, heads, head_dim].
HEAD_AXES = ("act_batch", "act_seq", "act_heads", None)

# Smallest key chunk the ring splits a block into; below it (a block length
# with no divisor near ``chunk_size``) the block is processed whole.
_MIN_KEY_CHUNK = 128
_NEG_INF = -1e30  # finite, so no inf - inf in the running-max updates


def check_mode(mode: str) -> str:
  """Returns ``mode`` or raises a ValueError naming the valid modes."""
  if mode not in MODES:
    raise ValueError(
      f"Unknown context_parallel mode {mode!r}; choose one of {MODES}."
    )
  return mode


def _shard_map(fn, mesh, in_specs, out_specs):
  """``jax.shard_map`` (jax >= 0.6) or the older experimental one."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(
      fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )
  from jax.experimental.shard_map import shard_map  # pragma: no cover

  return shard_map(fn, mesh, in_specs, out_specs, check_rep=False)


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _layout(q_shape, k_shape, mesh):
  """Specs of q and k/v, the token mesh axes and the head mesh axes."""
  q_spec = sharding.logical_to_spec(HEAD_AXES, q_shape, mesh)
  k_spec = sharding.logical_to_spec(HEAD_AXES, k_shape, mesh)
  if q_spec[1] != k_spec[1] or q_spec[0] != k_spec[0]:
    return None  # keys/values not sharded like the queries: no ring/Ulysses
  if q_spec[2] != k_spec[2]:
    # Query heads divide the head axes but the kv heads do not: replicate
    # heads for both, so every device holds whole query groups.
    q_spec = P(q_spec[0], q_spec[1], None, None)
    k_spec = P(k_spec[0], k_spec[1], None, None)
  return q_spec, k_spec, _axes(q_spec[1]), _axes(q_spec[2])


def resolve_mode(mode: str, q_shape, k_shape, mesh=None) -> str:
  """The scheme ``mode`` means for these shapes on the current mesh.

  Args:
    mode: one of ``MODES``.
    q_shape: ``[B, T, N, H]`` of the queries.
    k_shape: ``[B, S, K, H]`` of the keys (self-attention: ``S == T``).
    mesh: a mesh; default the current abstract mesh (``jax.set_mesh``).

  Returns:
    ``"none"`` (no sharded token axis, or cross-attention shapes),
    ``"ulysses"`` or ``"ring"``.

  Raises:
    ValueError: ``"ulysses"`` asked for heads that do not divide by the
      sequence shards.
  """
  check_mode(mode)
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if mode == "none" or mesh is None or mesh.empty or q_shape[1] != k_shape[1]:
    return "none"
  layout = _layout(q_shape, k_shape, mesh)
  if layout is None or not layout[2]:
    return "none"
  _, k_spec, seq_axes, head_axes = layout
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  shards = math.prod(sizes[a] for a in seq_axes)
  head_shards = math.prod(sizes[a] for a in head_axes)
  heads, kv_heads = q_shape[2] // head_shards, k_shape[2] // head_shards
  ulysses_fits = heads % shards == 0 and kv_heads % shards == 0
  if mode == "ulysses" and not ulysses_fits:
    raise ValueError(
      f"context_parallel='ulysses' needs the {heads} query and {kv_heads} "
      f"key/value heads per device to divide by the {shards} sequence "
      f"shards (mesh axes {seq_axes}); use 'ring' or 'auto', or a "
      "sequence axis that divides the heads."
    )
  if mode == "auto":
    return "ulysses" if ulysses_fits else "ring"
  return mode


def context_parallel_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  mode: str = "auto",
  scale: float | None = None,
  implementation: Implementation = "xla",
  chunk_size: int = 1024,
) -> jax.Array:
  """Full self-attention with the token axis sharded over the mesh.

  Call under ``jax.set_mesh`` (``sharding.use_mesh``); without a mesh, or
  when the token axis is not sharded, this is plain
  :func:`dot_product_attention`.

  Args:
    q: float[B, T, N, H] queries, token axis laid out by ``act_seq``.
    k: float[B, T, K, H] keys, K divides N (grouped-query attention).
    v: float[B, T, K, H] values.
    mode: one of ``MODES`` (see the module docstring).
    scale: logit scale, default ``1/sqrt(H)``.
    implementation: local attention kernel for Ulysses (and the fallback).
    chunk_size: key chunk of the ring (and query chunk of ``"chunked"``).

  Returns:
    float[B, T, N, H] in q's dtype, sharded like q.
  """
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  mesh = jax.sharding.get_abstract_mesh()
  scheme = resolve_mode(mode, q.shape, k.shape, mesh)
  if scheme == "none":
    return dot_product_attention(
      q, k, v, scale=scale, implementation=implementation, chunk_size=chunk_size
    )
  q_spec, k_spec, seq_axes, _ = _layout(q.shape, k.shape, mesh)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  shards = math.prod(sizes[a] for a in seq_axes)
  axis_name = seq_axes[0] if len(seq_axes) == 1 else seq_axes
  if scheme == "ulysses":
    local = lambda q, k, v: _ulysses_local(
      q,
      k,
      v,
      axis_name=axis_name,
      scale=scale,
      implementation=implementation,
      chunk_size=chunk_size,
    )
  else:
    local = lambda q, k, v: _ring_local(
      q,
      k,
      v,
      axis_name=axis_name,
      shards=shards,
      scale=scale,
      chunk_size=chunk_size,
    )
  fn = _shard_map(local, mesh, (q_spec, k_spec, k_spec), q_spec)
  return fn(q, k, v)


def _ulysses_local(q, k, v, *, axis_name, scale, implementation, chunk_size):
  """Per device: token shard -> head shard, full attention, and back."""

  def to_heads(x):  # [b, T/s, n, H] -> [b, T, n/s, H]
    return jax.lax.all_to_all(
      x, axis_name, split_axis=2, concat_axis=1, tiled=True
    )

  out = dot_product_attention(
    to_heads(q),
    to_heads(k),
    to_heads(v),
    scale=scale,
    implementation=implementation,
    chunk_size=chunk_size,
  )
  return jax.lax.all_to_all(
    out, axis_name, split_axis=1, concat_axis=2, tiled=True
  )


def key_chunk(block: int, chunk_size: int) -> int:
  """The largest divisor of ``block`` up to ``chunk_size`` (>= the floor),
  or the whole block when there is none that large."""
  if block <= chunk_size:
    return block
  for pieces in range(-(-block // chunk_size), block + 1):
    if block % pieces == 0:
      size = block // pieces
      return size if size >= min(_MIN_KEY_CHUNK, chunk_size) else block
  return block


def _ring_local(q, k, v, *, axis_name, shards, scale, chunk_size):
  """Per device: online softmax of the local queries over every k/v block.

  Shapes are per device: q [b, t, n, H], k and v [b, t, kh, H]. Statistics
  and the running output are fp32; ``p @ v`` runs in v's dtype with an fp32
  accumulator, as flash attention does. The gradient is a second ring (a
  custom VJP): it keeps only q, k, v, the output and the log-sum-exp, and
  sends each k/v block round again with its gradient, so the residuals are
  O(t) per device rather than one k/v copy per ring step.
  """
  ring = _Ring(q.shape, k.shape, axis_name, shards, scale, chunk_size)

  @jax.custom_vjp
  def attend(q, k, v):
    return ring.forward(q, k, v)[0]

  def attend_fwd(q, k, v):
    out, lse = ring.forward(q, k, v)
    return out, (q, k, v, out, lse)

  def attend_bwd(residuals, d_out):
    return ring.backward(*residuals, d_out)

  attend.defvjp(attend_fwd, attend_bwd)
  return attend(q, k, v)


class _Ring:
  """Forward and backward rings of :func:`_ring_local` for fixed shapes."""

  def __init__(self, q_shape, k_shape, axis_name, shards, scale, chunk_size):
    self.b, self.t, self.n, self.h = q_shape
    self.kv_heads = k_shape[2]
    self.groups = self.n // self.kv_heads
    self.chunk = key_chunk(k_shape[1], chunk_size)
    self.pieces = k_shape[1] // self.chunk
    self.axis_name, self.shards, self.scale = axis_name, shards, scale
    self.perm = [(i, (i + 1) % shards) for i in range(shards)]

  def _grouped(self, x):  # [b, t, n, H] -> [b, t, kh, g, H]
    return x.reshape(self.b, self.t, self.kv_heads, self.groups, self.h)

  def _chunks(self, x):  # [b, t, kh, H] -> [pieces, b, chunk, kh, H]
    x = x.reshape(self.b, self.pieces, self.chunk, self.kv_heads, self.h)
    return jnp.moveaxis(x, 1, 0)

  def _unchunk(self, x):  # the inverse of _chunks
    return jnp.moveaxis(x, 0, 1).reshape(self.b, self.t, self.kv_heads, self.h)

  def _pass(self, *blocks):
    return tuple(jax.lax.ppermute(x, self.axis_name, self.perm) for x in blocks)

  def _logits(self, qg, kc):
    return (
      jnp.einsum(
        "btkgh,bskh->btkgs", qg, kc, preferred_element_type=jnp.float32
      )
      * self.scale
    )

  def forward(self, q, k, v):
    """Output [b, t, n, H] in q's dtype and fp32 log-sum-exp [b, t, kh, g]."""
    f32 = jnp.float32
    qg = self._grouped(q)

    def update(stats, kv):
      out, row_max, row_sum = stats
      kc, vc = kv
      logits = self._logits(qg, kc)
      new_max = jnp.maximum(row_max, logits.max(-1))
      probs = jnp.exp(logits - new_max[..., None])
      keep = jnp.exp(row_max - new_max)
      row_sum = row_sum * keep + probs.sum(-1)
      out = out * keep[..., None] + jnp.einsum(
        "btkgs,bskh->btkgh",
        probs.astype(vc.dtype),
        vc,
        preferred_element_type=f32,
      )
      return (out, new_max, row_sum), None

    def attend_block(stats, kb, vb):
      return jax.lax.scan(update, stats, (self._chunks(kb), self._chunks(vb)))[
        0
      ]

    def ring_step(carry, _):  # receive the previous device's block, attend
      stats, kb, vb = carry
      kb, vb = self._pass(kb, vb)
      return (attend_block(stats, kb, vb), kb, vb), None

    stats_shape = (self.b, self.t, self.kv_heads, self.groups)
    stats = (
      jnp.zeros(stats_shape + (self.h,), f32),
      jnp.full(stats_shape, _NEG_INF, f32),
      jnp.zeros(stats_shape, f32),
    )
    stats = attend_block(stats, k, v)
    (stats, _, _), _ = jax.lax.scan(
      ring_step, (stats, k, v), None, length=self.shards - 1
    )
    out, row_max, row_sum = stats
    out = (out / row_sum[..., None]).reshape(q.shape).astype(q.dtype)
    return out, row_max + jnp.log(row_sum)

  def backward(self, q, k, v, out, lse, d_out):
    """Gradients (dq, dk, dv) of the forward for the output cotangent."""
    f32 = jnp.float32
    qg, dog = self._grouped(q), self._grouped(d_out.astype(q.dtype))
    # sum_j p_ij dp_ij = sum_h dO_ih O_ih (the softmax backward's row term).
    delta = jnp.sum(
      self._grouped(d_out).astype(f32) * self._grouped(out).astype(f32), -1
    )

    def chunk_grads(dq, kv):
      kc, vc = kv
      probs = jnp.exp(self._logits(qg, kc) - lse[..., None])
      dv = jnp.einsum(
        "btkgs,btkgh->bskh",
        probs.astype(dog.dtype),
        dog,
        preferred_element_type=f32,
      )
      dp = jnp.einsum("btkgh,bskh->btkgs", dog, vc, preferred_element_type=f32)
      ds = (probs * (dp - delta[..., None]) * self.scale).astype(q.dtype)
      dq = dq + jnp.einsum(
        "btkgs,bskh->btkgh", ds, kc, preferred_element_type=f32
      )
      dk = jnp.einsum("btkgs,btkgh->bskh", ds, qg, preferred_element_type=f32)
      return dq, (dk, dv)

    def block_grads(dq, kb, vb):
      dq, (dk, dv) = jax.lax.scan(
        chunk_grads, dq, (self._chunks(kb), self._chunks(vb))
      )
      return dq, self._unchunk(dk), self._unchunk(dv)

    def ring_step(carry, _):  # the block and its gradient move on together
      dq, kb, vb, dkb, dvb = carry
      kb, vb, dkb, dvb = self._pass(kb, vb, dkb, dvb)
      dq, dk, dv = block_grads(dq, kb, vb)
      return (dq, kb, vb, dkb + dk, dvb + dv), None

    dq = jnp.zeros(qg.shape, f32)
    dq, dk, dv = block_grads(dq, k, v)
    (dq, _, _, dk, dv), _ = jax.lax.scan(
      ring_step, (dq, k, v, dk, dv), None, length=self.shards - 1
    )
    dk, dv = self._pass(dk, dv)  # each block's gradient back to its owner
    return (
      dq.reshape(q.shape).astype(q.dtype),
      dk.astype(k.dtype),
      dv.astype(v.dtype),
    )


__all__ = [
  "MODES",
  "check_mode",
  "context_parallel_attention",
  "key_chunk",
  "resolve_mode",
]
