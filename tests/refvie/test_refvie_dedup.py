"""Perceptual hashing and the order-free near-duplicate rule."""

import itertools
import random

import numpy as np

from kiwi_jax.data import refvie_mini
from kiwi_jax.refvie import dedup
from tests.refvie.conftest import CFG


def test_phash_is_robust_to_small_changes_and_tells_scenes_apart():
  samples = [refvie_mini.make_sample(0, i, CFG) for i in range(12)]
  sigs = [dedup.signature(s.source, s.target) for s in samples]
  a = samples[0]
  brighter = lambda x: np.clip(x.astype(np.int16) + 3, 0, 255).astype(np.uint8)
  assert dedup.distance(sigs[0], sigs[0]) == 0
  assert (
    dedup.distance(
      sigs[0], dedup.signature(brighter(a.source), brighter(a.target))
    )
    <= 4
  )
  config = dedup.DedupConfig()
  closest = min(
    dedup.distance(x, y) for x, y in itertools.combinations(sigs, 2)
  )
  assert closest > config.max_distance, closest


def _random_signatures(rng, count, clusters):
  """Signatures in a few clusters of near-copies (random bit flips)."""
  bases = [[rng.getrandbits(64) for _ in range(6)] for _ in range(clusters)]
  out = []
  for i in range(count):
    base = bases[i % clusters]
    sig = []
    for h in base:
      for _ in range(rng.randrange(0, 5)):
        h ^= 1 << rng.randrange(64)
      sig.append(f"{h:016x}")
    out.append(
      dedup.Candidate(f"k{i:03d}", rng.choice([0.5, 0.7, 0.9]), tuple(sig))
    )
  return out


def _brute_force(candidates, max_distance):
  out = {}
  for c in candidates:
    better = [
      o
      for o in candidates
      if o.key != c.key
      and o.rank < c.rank
      and dedup.distance(o.signature, c.signature) <= max_distance
    ]
    if better:
      out[c.key] = min(better, key=lambda o: o.rank).key
  return out


def test_find_duplicates_equals_the_rule_in_any_order():
  rng = random.Random(0)
  candidates = _random_signatures(rng, 60, 7)
  config = dedup.DedupConfig(max_distance=6)
  want = _brute_force(candidates, config.max_distance)
  assert want and len(want) < len(candidates)  # the check can fail
  for _ in range(3):
    rng.shuffle(candidates)
    assert dedup.find_duplicates(candidates, config) == want


def test_bands_find_every_pair_within_the_distance():
  rng = random.Random(1)
  d = 6
  for _ in range(200):
    a = [rng.getrandbits(64) for _ in range(6)]
    b = list(a)
    for i in (1, 4):  # the banded hashes, d flips each at most
      for bit in rng.sample(range(64), rng.randrange(0, d + 1)):
        b[i] ^= 1 << bit
    ka = dedup.band_keys([f"{h:016x}" for h in a], d)
    kb = dedup.band_keys([f"{h:016x}" for h in b], d)
    assert set(ka) & set(kb)
