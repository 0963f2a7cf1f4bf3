"""Edit success against hand-computed distances, and on RefVIE-mini."""

import json

import numpy as np
import pytest

from kiwi_jax.data import refvie_mini
from kiwi_jax.evaluators import edit_success as es

FRAMES, HEIGHT, WIDTH = 3, 4, 5


def _case():
  """Source all zero; the edit paints (30, 60, 90) into a 2x2 square in
  every frame: 12 of the 60 pixels, edit size (30+60+90)/3/255 = 60/255."""
  source = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
  mask = np.zeros((FRAMES, HEIGHT, WIDTH), bool)
  mask[:, 1:3, 2:4] = True
  target = source.copy()
  target[mask] = (30, 60, 90)
  return source, target, mask


def test_identity_fails_and_target_succeeds():
  source, target, mask = _case()
  identity = es.score_edit(source, source, target, mask)
  assert identity == es.EditScore(
    in_target=60 / 255,
    in_source=0.0,
    out_source=0.0,
    allowed=0.5 * 60 / 255,
    success=False,
  )
  assert not identity.in_region_ok and identity.outside_ok
  exact = es.score_edit(target, source, target, mask)
  assert exact == es.EditScore(0.0, 60 / 255, 0.0, 30 / 255, True)


def test_half_way_blend_is_a_tie_and_fails():
  source, target, mask = _case()
  blend = source.copy()
  blend[mask] = (15, 30, 45)  # half-way inside, exact outside
  score = es.score_edit(blend, source, target, mask)
  assert score.in_target == 30 / 255  # (15 + 30 + 45) / 3 / 255
  assert score.in_source == 30 / 255
  assert score.out_source == 0.0
  assert score.allowed == 30 / 255
  assert not score.success and not score.in_region_ok and score.outside_ok
  # A bit past half-way passes: distances (8+16+24)/3 and (22+44+66)/3.
  blend[mask] = (22, 44, 66)
  score = es.score_edit(blend, source, target, mask)
  assert score.in_target == pytest.approx(16 / 255, abs=1e-15)
  assert score.in_source == pytest.approx(44 / 255, abs=1e-15)
  assert score.success


def test_right_inside_but_changing_outside_too_much_fails():
  source, target, mask = _case()
  out = target.copy()
  # Shift every outside pixel by 30 per channel: exactly rho * 60/255.
  out[~mask] = 30
  at_limit = es.score_edit(out, source, target, mask)
  assert at_limit.in_target == 0.0
  assert at_limit.out_source == 30 / 255 == at_limit.allowed
  assert at_limit.success  # at most half: equality passes
  # A smaller rho refuses the at-limit output.
  assert not es.score_edit(out, source, target, mask, rho=0.49).success
  out[~mask] = 31
  over = es.score_edit(out, source, target, mask)
  assert over.out_source == pytest.approx(31 / 255, abs=1e-15)
  assert over.in_region_ok and not over.outside_ok and not over.success
  # A larger rho allows it: 31/255 <= 0.6 * 60/255 = 36/255.
  assert es.score_edit(out, source, target, mask, rho=0.6).success
  # Change only 12 of the 48 outside pixels by 100: mean 25/255 < 30/255.
  out = target.copy()
  outside = np.argwhere(~mask)[:12]
  out[tuple(outside.T)] = 100
  partial = es.score_edit(out, source, target, mask)
  assert partial.out_source == pytest.approx(12 * 100 / 48 / 255, abs=1e-15)
  assert partial.success


def test_outside_allowance_counts_the_targets_own_outside_change():
  source, target, mask = _case()
  target[~mask] = 12  # a global edit: the target changes outside too
  # d(target, source, ~mask) = 12/255; allowed = 12/255 + 0.5 * 60/255.
  score = es.score_edit(target, source, target, mask)
  assert score.allowed == pytest.approx(42 / 255, abs=1e-15)
  assert score.out_source == pytest.approx(12 / 255, abs=1e-15)
  assert score.success


def test_float_inputs_and_a_per_frame_mask_give_the_same_numbers():
  source, target, mask = _case()
  blend = source.copy()
  blend[mask] = (22, 44, 66)
  want = es.score_edit(blend, source, target, mask)
  got = es.score_edit(blend / 255, source / 255.0, target, mask[0])
  for field in ("in_target", "in_source", "out_source", "allowed"):
    assert getattr(got, field) == pytest.approx(getattr(want, field), 1e-12)
  assert got.success == want.success
  # A float32 clip in [0, 1] is accepted too.
  got32 = es.score_edit((blend / 255).astype(np.float32), source, target, mask)
  assert got32.in_target == pytest.approx(16 / 255, abs=1e-7)


def test_a_mask_over_every_pixel_passes_the_outside_test():
  source, _, _ = _case()
  target = np.full_like(source, 51)
  mask = np.ones((FRAMES, HEIGHT, WIDTH), bool)
  score = es.score_edit(target, source, target, mask)
  assert score.out_source == 0.0 and score.allowed == pytest.approx(0.1)
  assert score.success


def test_aggregate_per_type_and_overall():
  source, target, mask = _case()
  ok = es.score_edit(target, source, target, mask)
  none = es.score_edit(source, source, target, mask)
  leaky = target.copy()
  leaky[~mask] = 200
  leak = es.score_edit(leaky, source, target, mask)
  scored = [
    ("local_add", ok),
    ("local_add", none),
    ("local_add", ok),
    ("background_change", leak),
    ("local_remove", ok),
  ]
  result = es.aggregate(scored)
  assert list(result["by_type"]) == [
    "background_change",
    "local_add",
    "local_remove",
  ]
  assert result["by_type"]["local_add"] == {
    "clips": 3,
    "successes": 2,
    "success_rate": 2 / 3,
    "in_region_rate": 2 / 3,
    "outside_rate": 1.0,
  }
  assert result["by_type"]["background_change"] == {
    "clips": 1,
    "successes": 0,
    "success_rate": 0.0,
    "in_region_rate": 1.0,
    "outside_rate": 0.0,
  }
  assert result["by_type"]["local_remove"]["success_rate"] == 1.0
  assert result["overall"] == {
    "clips": 5,
    "successes": 3,
    "success_rate": 3 / 5,
    "in_region_rate": 4 / 5,
    "outside_rate": 4 / 5,
  }
  assert json.loads(json.dumps(result)) == result
  assert json.loads(json.dumps(ok.to_json())) == ok.to_json()
  with pytest.raises(ValueError, match="no scored clips"):
    es.aggregate([])


@pytest.mark.parametrize(
  "change, match",
  [
    (lambda o, s, t, m: (o[:, :, :-1], s, t, m), "one shape"),
    (
      lambda o, s, t, m: (o, s[..., :2], t, m),
      r"source must be \[T, H, W, 3\]",
    ),
    (lambda o, s, t, m: (o, s, t[0], m), r"target must be \[T, H, W, 3\]"),
    (lambda o, s, t, m: (o, s, t, m[:2]), "mask must be"),
    (lambda o, s, t, m: (o, s, t, m[:, :, :-1]), "mask must be"),
    (lambda o, s, t, m: (o, s, t, m.astype(np.uint8)), "mask must be bool"),
    (lambda o, s, t, m: (o, s, t, np.zeros_like(m)), "mask is empty"),
    (lambda o, s, t, m: (o.astype(np.int32), s, t, m), "uint8 or float"),
    (lambda o, s, t, m: (o * 1.0, s, t, m), r"not in \[0, 1\]"),
    (lambda o, s, t, m: (o / 255 - 0.5, s, t, m), r"not in \[0, 1\]"),
  ],
)
def test_bad_inputs_raise(change, match):
  source, target, mask = _case()
  output = target.copy()
  output[0, 0, 0] = 255
  args = change(output, source, target, mask)
  with pytest.raises(ValueError, match=match):
    es.score_edit(*args)
  with pytest.raises(ValueError, match="rho"):
    es.score_edit(target, source, target, mask, rho=-1)


def test_refvie_mini_identity_fails_and_target_succeeds_for_every_type():
  cfg = refvie_mini.MiniConfig(height=32, width=32, num_frames=5)
  scored_identity, scored_target = [], []
  for edit_type in refvie_mini.EDIT_TYPES:
    for index in range(2):
      sample = refvie_mini.make_sample(3, index, cfg, edit_type=edit_type)
      assert sample.mask.any(), sample.key
      identity = es.score_sample(sample.source, sample)
      target = es.score_sample(sample.target, sample)
      # Local edits leave the outside untouched; so do background edits
      # (the objects do not change).
      assert target.in_target == 0.0 and target.out_source == 0.0
      assert identity.in_source == 0.0 and identity.in_target > 0
      scored_identity.append((edit_type, identity))
      scored_target.append((edit_type, target))
  identity_rates = es.aggregate(scored_identity)
  target_rates = es.aggregate(scored_target)
  assert set(identity_rates["by_type"]) == set(refvie_mini.EDIT_TYPES)
  for edit_type in refvie_mini.EDIT_TYPES:
    assert identity_rates["by_type"][edit_type]["success_rate"] == 0.0
    assert target_rates["by_type"][edit_type]["success_rate"] == 1.0
  assert identity_rates["overall"]["success_rate"] == 0.0
  assert target_rates["overall"] == {
    "clips": 12,
    "successes": 12,
    "success_rate": 1.0,
    "in_region_rate": 1.0,
    "outside_rate": 1.0,
  }
