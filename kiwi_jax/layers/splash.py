"""TPU flash attention: a wrapper over Pallas splash attention.

:func:`splash_attention` runs ``jax.experimental.pallas.ops.tpu.
splash_attention`` on kiwi_jax's ``[B, T, N, H]`` layout with the masks its
models need:

* full bidirectional attention (DiT self-attention, VAE mid-block);
* causal attention (Qwen text);
* segment ids (Qwen's window attention, padded text);
* padded keys (the DiT's padded reference/context rows), as a
  ``kv_valid`` bool[B, S] that becomes a padding segment id;
* grouped-query attention (``K`` kv heads dividing ``N``).

The kernel tiles the sequences in blocks of 128, 256 or 512 rows
(:func:`block_size`); ``T`` and ``S`` are padded to the block and the padding
is masked with segment ids, so any length works. The head dimension is
zero-padded to a multiple of 128 (the TPU lane width); zero columns change
neither the logits nor the kept outputs. The logit ``scale`` is applied to
``q`` before the kernel (splash attention applies none).

Off TPU the kernel runs in Pallas interpret mode (slow, for tests only).
Under a mesh with more than one device the kernel is wrapped in
``shard_map`` over the batch (``act_batch``), head (``act_heads``) and, for
non-causal attention, query-sequence (``act_seq``) axes of the rules table,
since GSPMD cannot partition a Pallas call; keys and values are gathered
along the sequence, as in the XLA path.

Fully masked query rows (possible only when the caller masks every key)
average the values instead of producing NaN, as the XLA path does.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

from kiwi_jax import sharding

LANES = 128
BLOCK_CHOICES = (512, 256, 128)
# Segment ids of padded keys and padded queries: never equal to each other
# nor to a caller's id (the Qwen vision tower uses -1 for its padding).
KV_PAD_SEGMENT = int(np.iinfo(np.int32).min)
Q_PAD_SEGMENT = KV_PAD_SEGMENT + 1


@functools.cache
def _load():
  """(the splash module, None) or (None, why it cannot be used).

  Imported on first use (it costs a quarter second) and guarded: the module
  and its arguments have moved between jax versions.
  """
  try:
    from jax.experimental.pallas.ops.tpu import splash_attention as module
  except ImportError as error:
    return None, (
      f"jax {jax.__version__} has no Pallas splash attention ({error})"
    )
  needed = {
    "make_splash_mha",
    "BlockSizes",
    "SegmentIds",
    "FullMask",
    "CausalMask",
    "MultiHeadMask",
  }
  missing = sorted(name for name in needed if not hasattr(module, name))
  if missing:
    return None, (
      f"jax {jax.__version__}'s splash attention lacks {', '.join(missing)}"
    )
  params = inspect.signature(module.make_splash_mha).parameters
  absent = sorted(
    {"block_sizes", "head_shards", "q_seq_shards", "interpret"} - set(params)
  )
  if absent:
    return None, (
      f"jax {jax.__version__}'s make_splash_mha takes no "
      f"{', '.join(absent)} argument"
    )
  return module, None


def unavailable_reason() -> str | None:
  """Why splash attention cannot run with this jax, or None if it can."""
  return _load()[1]


def block_size(length: int) -> int:
  """The kernel's block along a sequence of ``length`` rows.

  The largest of 512, 256 and 128 whose padding costs at most 1/32 more
  rows than padding to 128 (big blocks are faster; short sequences should
  not be padded to 512).
  """
  minimal = _round_up(length, LANES)
  for block in BLOCK_CHOICES:
    if _round_up(length, block) * 32 <= minimal * 33:
      return block
  return LANES


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _build_kernel(
  num_heads: int,
  q_len: int,
  kv_len: int,
  causal: bool,
  block_q: int,
  block_kv: int,
  interpret: bool,
):
  lib = _load()[0]
  sizes = lib.BlockSizes(
    block_q=block_q,
    block_kv=block_kv,
    block_kv_compute=block_kv,
    block_q_dkv=block_q,
    block_kv_dkv=block_kv,
    block_kv_dkv_compute=block_kv,
    block_q_dq=block_q,
    block_kv_dq=block_kv,
  )
  shape = (q_len, kv_len)
  one = lib.CausalMask(shape) if causal else lib.FullMask(shape)
  mask = lib.MultiHeadMask([one] * num_heads)
  return lib.make_splash_mha(
    mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )


@functools.lru_cache(maxsize=64)
def _cached_kernel(
  num_heads: int,
  q_len: int,
  kv_len: int,
  causal: bool,
  block_q: int,
  block_kv: int,
  interpret: bool,
  mesh,
):
  """``mesh`` (the abstract mesh in context) is part of the cache key
  only: the kernel's arrays carry the context they were made in, and one
  made inside a ``shard_map`` fails outside it."""
  del mesh
  # The kernel holds its block maps as arrays: build them concretely even
  # when called while tracing, so the cached kernel holds no tracer.
  with jax.ensure_compile_time_eval():
    return _build_kernel(
      num_heads, q_len, kv_len, causal, block_q, block_kv, interpret
    )


def _kernel(
  num_heads: int,
  q_len: int,
  kv_len: int,
  causal: bool,
  block_q: int,
  block_kv: int,
  interpret: bool,
  mesh,
):
  """A single-device splash kernel for [N, q_len, H] x [K, kv_len, H]."""
  if sharding.target_platform() != jax.default_backend():
    # Compiling for devices that run nothing (TPU from a CPU host,
    # ``kiwi_jax.plan``): concrete block maps cannot be made there, so
    # they are staged into this trace as constants, uncached.
    return _build_kernel(
      num_heads, q_len, kv_len, causal, block_q, block_kv, interpret
    )
  return _cached_kernel(
    num_heads, q_len, kv_len, causal, block_q, block_kv, interpret, mesh
  )


def _pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _local_splash(q, k, v, q_ids, kv_ids, *, causal, interpret):
  """Splash on local arrays: q [B, N, T, H], k/v [B, K, S, H], ids or None.

  ``q`` is already scaled. Pads T, S and H, runs the kernel per batch row
  and slices the padding off.
  """
  _, n, t, h = q.shape
  s = k.shape[2]
  bq, bkv = block_size(t), block_size(s)
  t_pad, s_pad, h_pad = _round_up(t, bq), _round_up(s, bkv), _round_up(h, LANES)
  if q_ids is None and (t_pad != t or s_pad != s):
    q_ids = jnp.zeros(q.shape[:1] + (t,), jnp.int32)
    kv_ids = jnp.zeros(k.shape[:1] + (s,), jnp.int32)
  q = _pad_axis(_pad_axis(q, 2, t_pad), 3, h_pad)
  k = _pad_axis(_pad_axis(k, 2, s_pad), 3, h_pad)
  v = _pad_axis(_pad_axis(v, 2, s_pad), 3, h_pad)
  kernel = _kernel(
    n,
    t_pad,
    s_pad,
    causal,
    bq,
    bkv,
    interpret,
    jax.sharding.get_abstract_mesh(),
  )
  segment_ids_type = _load()[0].SegmentIds
  if q_ids is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    q_ids = _pad_axis(q_ids.astype(jnp.int32), 1, t_pad, Q_PAD_SEGMENT)
    kv_ids = _pad_axis(kv_ids.astype(jnp.int32), 1, s_pad, KV_PAD_SEGMENT)
    out = jax.vmap(
      lambda q, k, v, qi, ki: kernel(
        q, k, v, segment_ids=segment_ids_type(qi, ki)
      )
    )(q, k, v, q_ids, kv_ids)
  return out[:, :, :t, :h]


def _axes(part) -> tuple[str, ...]:
  """Mesh axis names of one PartitionSpec entry or rules-table value."""
  if part is None:
    return ()
  return (part,) if isinstance(part, str) else tuple(part)


def _mesh_specs(mesh, q_shape, kv_heads, causal):
  """shard_map specs (q, kv, q ids, kv ids, axes) or None to run unsharded."""
  # Axes a caller's shard_map made manual are already split: leave them.
  free = set(getattr(mesh, "auto_axes", mesh.axis_names)) | set(
    getattr(mesh, "explicit_axes", ())
  )
  if not free:
    return None  # already inside a shard_map over every axis
  rules = [
    (name, tuple(a for a in _axes(axes) if a in free))
    for name, axes in sharding.current_rules()
  ]
  names = ("act_batch", "act_heads", None if causal else "act_seq", None)
  batch, heads, seq, _ = sharding.logical_to_spec(names, q_shape, mesh, rules)
  if heads is not None:
    if kv_heads % math.prod(mesh.shape[a] for a in _axes(heads)):
      heads = None  # kv heads must split like the query heads
  used = [a for part in (batch, heads, seq) for a in _axes(part)]
  if not used and sharding.target_platform() != "tpu":
    return None
  # Mosaic kernels take no automatic partitioning: the size-1 axes are
  # manual too, and on TPU a kernel whose inputs do not split runs
  # replicated on every device rather than outside a shard_map.
  trivial = {a for a in free if mesh.shape[a] == 1}
  manual = frozenset(used) | trivial if used else frozenset(free)
  p = jax.sharding.PartitionSpec
  return (
    p(batch, heads, seq, None),
    p(batch, heads, None, None),
    p(batch, seq),
    p(batch, None),
    manual,
  )


def splash_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  q_segment_ids: jax.Array | None = None,
  kv_segment_ids: jax.Array | None = None,
  kv_valid: jax.Array | None = None,
  is_causal: bool = False,
  scale: float | None = None,
  interpret: bool | None = None,
) -> jax.Array:
  """Flash attention with the Pallas TPU splash kernel.

  Args:
    q: float[B, T, N, H] queries.
    k: float[B, S, K, H] keys, K divides N.
    v: float[B, S, K, H] values.
    q_segment_ids: optional int[B, T]; with ``kv_segment_ids`` int[B, S],
      tokens attend only to keys of the same id.
    kv_segment_ids: see ``q_segment_ids``.
    kv_valid: optional bool[B, S] (or [1, S]); False keys are ignored.
    is_causal: causal mask (query i sees keys 0..i).
    scale: logit scale, default ``1/sqrt(H)``.
    interpret: run the kernel in Pallas interpret mode; default: off TPU.

  Returns:
    float[B, T, N, H] in q's dtype.

  Raises:
    RuntimeError: if this jax has no usable splash attention.
  """
  reason = unavailable_reason()
  if reason is not None:
    raise RuntimeError(f"Splash attention is unavailable: {reason}.")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  if interpret is None:
    interpret = sharding.target_platform() != "tpu"
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  if scale is None:
    scale = 1.0 / math.sqrt(h)
  if kv_valid is not None:
    kv_valid = jnp.broadcast_to(kv_valid, (b, s))
    if q_segment_ids is None:
      q_segment_ids = jnp.zeros((b, t), jnp.int32)
      kv_segment_ids = jnp.zeros((b, s), jnp.int32)
    kv_segment_ids = jnp.where(kv_valid, kv_segment_ids, KV_PAD_SEGMENT)
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, heads, len, H]
  local = functools.partial(
    _local_splash, causal=is_causal, interpret=interpret
  )
  mesh = jax.sharding.get_abstract_mesh()
  specs = None
  if not mesh.empty and math.prod(mesh.axis_sizes) > 1:
    specs = _mesh_specs(mesh, q.shape, kv_heads, is_causal)
  if specs is None:
    out = local(q, k, v, q_segment_ids, kv_segment_ids)
  else:
    q_spec, kv_spec, q_ids_spec, kv_ids_spec, axes = specs
    args, in_specs = (q, k, v), (q_spec, kv_spec, kv_spec)
    if q_segment_ids is not None:
      args += (q_segment_ids, kv_segment_ids)
      in_specs += (q_ids_spec, kv_ids_spec)
    body = (
      local if len(args) == 5 else (lambda q, k, v: local(q, k, v, None, None))
    )
    out = jax.shard_map(
      body,
      mesh=mesh,
      in_specs=in_specs,
      out_specs=q_spec,
      axis_names=axes,
      check_vma=False,
    )(*args)
  return jnp.swapaxes(out, 1, 2)
