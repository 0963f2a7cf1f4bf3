"""Reading Kiwi's condition features out of the MLLM's last hidden states.

Reference: ``QwenVLMLLMEncoder.forward`` in
``diffsynth/models/mllm_encoder.py`` (reference §2.4, quirk 1).

* Query readout. The reference takes ``hidden_states[:, -N:]``: the last N
  positions of the whole sequence. The chat template closes the user turn
  with ``<|im_end|>`` and ``\\n`` after the N placeholders, so those N
  positions are query tokens 3..N plus ``<|im_end|>`` and ``\\n`` (the
  "off-by-two" readout). The released weights were trained with it, so it is
  the default (``"last"``); ``"queries"`` reads the placeholder positions
  themselves, for models trained from scratch that way.
* Reference-image features: the hidden states strictly between the last
  ``<|vision_start|>`` and the first ``<|vision_end|>`` after it (the
  reference image's ``<|image_pad|>`` tokens, since the video comes first).

Everything here is batched and jit-able: padded batches carry an
``attention_mask`` (left or right padding), sequence positions are computed
with array ops, and variable-length spans come back at a static maximum
length with a validity mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

READOUT_MODES = ("last", "queries")


def _valid_mask(
  input_ids: jax.Array, attention_mask: jax.Array | None
) -> jax.Array:
  if attention_mask is None:
    return jnp.ones(input_ids.shape, bool)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(
      f"attention_mask shape {tuple(attention_mask.shape)} "
      f"differs from input_ids {tuple(input_ids.shape)}."
    )
  return attention_mask.astype(bool)


def sequence_end(
  input_ids: jax.Array, attention_mask: jax.Array | None = None
) -> jax.Array:
  """int32[B]: one past the last valid position of each row."""
  valid = _valid_mask(input_ids, attention_mask)
  pos = jnp.arange(input_ids.shape[1], dtype=jnp.int32)
  return jnp.max(jnp.where(valid, pos + 1, 0), axis=1)


def _gather_rows(hidden: jax.Array, index: jax.Array) -> jax.Array:
  """hidden[B, L, D], index int[B, N] -> float[B, N, D]."""
  index = jnp.clip(index, 0, hidden.shape[1] - 1)
  return jnp.take_along_axis(hidden, index[..., None], axis=1)


def query_indices(
  input_ids: jax.Array,
  num_queries: int,
  *,
  query_token_id: int | None = None,
  attention_mask: jax.Array | None = None,
  mode: str = "last",
) -> jax.Array:
  """int32[B, num_queries]: the positions the query readout takes.

  Args:
    input_ids: int[B, L].
    num_queries: N, the number of learnable queries of the mode.
    query_token_id: placeholder id (``<|object_ref_start|>``); needed for
      ``mode="queries"``.
    attention_mask: int/bool[B, L], 1 on real tokens (any padding side).
    mode: ``"last"`` (reference behaviour: the last N valid positions) or
      ``"queries"`` (the first N placeholder positions, in order).
  """
  if mode not in READOUT_MODES:
    raise ValueError(
      f"Unknown readout mode {mode!r}; choose one of {READOUT_MODES}."
    )
  if num_queries > input_ids.shape[1]:
    raise ValueError(
      f"Cannot read {num_queries} queries from sequences of "
      f"length {input_ids.shape[1]}."
    )
  if mode == "last":
    end = sequence_end(input_ids, attention_mask)
    return end[:, None] - num_queries + jnp.arange(num_queries, dtype=jnp.int32)
  if query_token_id is None:
    raise ValueError("mode='queries' needs query_token_id.")
  is_query = (input_ids == query_token_id) & _valid_mask(
    input_ids, attention_mask
  )
  # A stable sort of "not a query" puts the placeholder positions first, in
  # sequence order.
  order = jnp.argsort(~is_query, axis=1, stable=True)
  return order[:, :num_queries].astype(jnp.int32)


def read_queries(
  hidden: jax.Array, input_ids: jax.Array, num_queries: int, **kwargs
) -> jax.Array:
  """float[B, N, D]: the query features (see :func:`query_indices`).

  Args:
    hidden: float[B, L, D] last hidden states (after the final norm).
    input_ids: int[B, L].
    num_queries: N.
    **kwargs: ``query_token_id``, ``attention_mask``, ``mode``.
  """
  return _gather_rows(hidden, query_indices(input_ids, num_queries, **kwargs))


def count_query_tokens(
  input_ids: jax.Array,
  query_token_id: int,
  attention_mask: jax.Array | None = None,
) -> jax.Array:
  """int32[B]: placeholders per row (the reference insists it equals N)."""
  valid = _valid_mask(input_ids, attention_mask)
  return jnp.sum((input_ids == query_token_id) & valid, axis=1, dtype=jnp.int32)


def reference_span(
  input_ids: jax.Array,
  vision_start_id: int,
  vision_end_id: int,
  attention_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Where the reference image's tokens are.

  Returns:
    ``(start, count)``, int32[B] each: the first position after the last
    ``<|vision_start|>`` and the number of tokens before the first
    ``<|vision_end|>`` that follows it. ``count`` is 0 where a row has no
    such pair (the reference then adds no reference features).
  """
  valid = _valid_mask(input_ids, attention_mask)
  length = input_ids.shape[1]
  pos = jnp.arange(length, dtype=jnp.int32)
  starts = jnp.where((input_ids == vision_start_id) & valid, pos, -1)
  last_start = jnp.max(starts, axis=1)
  ends = jnp.where(
    (input_ids == vision_end_id) & valid & (pos[None] > last_start[:, None]),
    pos,
    length,
  )
  first_end = jnp.min(ends, axis=1)
  found = (last_start >= 0) & (first_end < length)
  count = jnp.where(found, first_end - last_start - 1, 0)
  return last_start + 1, count.astype(jnp.int32)


def read_span(
  hidden: jax.Array, start: jax.Array, count: jax.Array, max_len: int
) -> tuple[jax.Array, jax.Array]:
  """Gathers ``hidden[b, start[b] : start[b] + count[b]]`` at a static size.

  Args:
    hidden: float[B, L, D].
    start: int[B].
    count: int[B], at most ``max_len``.
    max_len: static number of rows returned.

  Returns:
    ``(features, mask)``: float[B, max_len, D] with rows past ``count``
    zeroed, and bool[B, max_len].
  """
  offsets = jnp.arange(max_len, dtype=jnp.int32)
  mask = offsets[None] < count[:, None]
  rows = _gather_rows(hidden, start[:, None] + offsets[None])
  return jnp.where(mask[..., None], rows, 0).astype(hidden.dtype), mask


def read_reference(
  hidden: jax.Array,
  input_ids: jax.Array,
  max_len: int,
  *,
  vision_start_id: int,
  vision_end_id: int,
  attention_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The reference image's features: :func:`reference_span` + :func:`read_span`.

  ``max_len`` is static; with the reference's limit of
  ``max_object_token`` (768) reference tokens it never truncates. When every
  row has exactly ``max_len`` tokens (one bucketed ref size, or B = 1 with
  the count known on the host), the mask is all true and the features equal
  the reference's slice exactly.
  """
  start, count = reference_span(
    input_ids, vision_start_id, vision_end_id, attention_mask
  )
  return read_span(hidden, start, jnp.minimum(count, max_len), max_len)


def host_reference_count(
  input_ids, vision_start_id: int, vision_end_id: int
) -> int:
  """The reference-token count of a host (numpy) batch; rows must agree.

  Lets a caller pick ``max_len`` so that no padding is needed (the exact
  reference layout).
  """
  import numpy as np

  ids = np.asarray(input_ids)
  counts = set()
  for row in ids:
    starts = np.nonzero(row == vision_start_id)[0]
    if not len(starts):
      counts.add(0)
      continue
    ends = np.nonzero(row[starts[-1] :] == vision_end_id)[0]
    counts.add(int(ends[0]) - 1 if len(ends) else 0)
  if len(counts) != 1:
    raise ValueError(
      f"Rows have different reference-token counts "
      f"{sorted(counts)}; pad with read_reference's mask."
    )
  return counts.pop()
