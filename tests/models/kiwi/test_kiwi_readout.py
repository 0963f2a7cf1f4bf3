"""Query and reference-feature readout against the reference's slicing."""

import jax
import numpy as np
import pytest

from kiwi_jax.models.kiwi import readout

VS, VE, Q, PAD, IMG, END, NL = 9, 10, 3, 0, 12, 2, 7
RNG = np.random.default_rng(0)


def _row(n_video, n_ref, n_queries, text=5):
  """ids like the Kiwi chat: video block, text, ref block, queries, end."""
  ids = [1, 50, 51]
  ids += [VS] + [13] * n_video + [VE] + [60] * text
  if n_ref is not None:
    ids += [VS] + [IMG] * n_ref + [VE]
  ids += [Q] * n_queries + [END, NL]
  return ids


def _pad(rows, left):
  length = max(map(len, rows))
  ids = np.full((len(rows), length), PAD, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    sl = slice(length - len(r), length) if left else slice(0, len(r))
    ids[i, sl] = r
    mask[i, sl] = 1
  return ids, mask


def _ref_last_n(hidden_row, ids_row, n):
  """The reference: hidden_states[:, -N:] of the unpadded row."""
  return hidden_row[len(ids_row) - n : len(ids_row)]


def _ref_span(hidden_row, ids_row):
  ids_row = np.asarray(ids_row)
  s = np.nonzero(ids_row == VS)[0][-1]
  e = s + np.nonzero(ids_row[s:] == VE)[0][0]
  return hidden_row[s + 1 : e]


@pytest.mark.parametrize("left", [False, True])
def test_last_n_readout_is_the_reference_slice_under_padding(left):
  rows = [_row(7, 5, 11), _row(3, 2, 11, text=9), _row(5, None, 11)]
  ids, mask = _pad(rows, left)
  hidden = RNG.normal(size=ids.shape + (13,)).astype(np.float32)
  got = jax.jit(
    lambda h, i, m: readout.read_queries(h, i, 11, attention_mask=m)
  )(hidden, ids, mask)
  for b, r in enumerate(rows):
    off = ids.shape[1] - len(r) if left else 0
    want = _ref_last_n(hidden[b, off:], r, 11)
    np.testing.assert_array_equal(np.asarray(got[b]), want)
    # The quirk: the last two rows are <|im_end|> and "\n", not queries.
    idx = readout.query_indices(ids, 11, attention_mask=mask)[b]
    assert list(ids[b, np.asarray(idx)][-2:]) == [END, NL]


def test_query_positions_mode_reads_the_placeholders():
  rows = [_row(4, 3, 7), _row(2, None, 7, text=3)]
  ids, mask = _pad(rows, left=False)
  hidden = RNG.normal(size=ids.shape + (5,)).astype(np.float32)
  got = readout.read_queries(
    hidden, ids, 7, query_token_id=Q, attention_mask=mask, mode="queries"
  )
  for b in range(2):
    pos = np.nonzero(ids[b] == Q)[0]
    np.testing.assert_array_equal(np.asarray(got[b]), hidden[b, pos])
  np.testing.assert_array_equal(
    readout.count_query_tokens(ids, Q, mask), [7, 7]
  )
  # Without padding the default readout differs from the placeholders by
  # exactly two positions.
  idx_last = readout.query_indices(ids[:1, : len(rows[0])], 7)
  idx_q = readout.query_indices(
    ids[:1, : len(rows[0])], 7, query_token_id=Q, mode="queries"
  )
  np.testing.assert_array_equal(np.asarray(idx_last) - 2, np.asarray(idx_q))


@pytest.mark.parametrize("left", [False, True])
def test_reference_span_matches_reference_slice(left):
  rows = [_row(6, 4, 5), _row(3, 7, 5, text=2), _row(4, None, 5)]
  ids, mask = _pad(rows, left)
  hidden = RNG.normal(size=ids.shape + (3,)).astype(np.float32)
  feats, valid = jax.jit(
    lambda h, i, m: readout.read_reference(
      h, i, 8, vision_start_id=VS, vision_end_id=VE, attention_mask=m
    )
  )(hidden, ids, mask)
  for b, r in enumerate(rows):
    off = ids.shape[1] - len(r) if left else 0
    # Row 2 has one vision block only (the video): like the reference, the
    # span is then the video's tokens (last vision_start/end pair).
    want = _ref_span(hidden[b, off:], r)
    n = len(want)
    np.testing.assert_array_equal(np.asarray(valid[b]), np.arange(8) < n)
    np.testing.assert_array_equal(np.asarray(feats[b, :n]), want)
    assert not np.any(np.asarray(feats[b, n:]))


def test_reference_span_without_vision_pair_is_empty():
  ids = np.array([[1, 2, VS, 5, 6, Q, Q], [1, VE, 4, 5, 6, Q, Q]])
  start, count = readout.reference_span(ids, VS, VE)
  np.testing.assert_array_equal(count, [0, 0])


def test_host_reference_count():
  ids, _ = _pad([_row(3, 4, 2), _row(5, 4, 2)], left=True)
  assert readout.host_reference_count(ids, VS, VE) == 4
  ids, _ = _pad([_row(3, 4, 2), _row(5, 6, 2)], left=True)
  with pytest.raises(ValueError, match="different reference-token counts"):
    readout.host_reference_count(ids, VS, VE)


def test_bad_arguments_are_named():
  ids = np.zeros((1, 4), np.int32)
  with pytest.raises(ValueError, match="Unknown readout mode"):
    readout.query_indices(ids, 2, mode="middle")
  with pytest.raises(ValueError, match="Cannot read 9 queries"):
    readout.query_indices(ids, 9)
  with pytest.raises(ValueError, match="query_token_id"):
    readout.query_indices(ids, 2, mode="queries")
