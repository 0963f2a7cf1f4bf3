"""Stage 4b: global near-duplicate removal with perceptual hashes.

Each accepted pair gets a signature: 64-bit DCT perceptual hashes (pHash) of
the first, middle and last frames of the source and of the target. Two pairs
are near-duplicates when every one of those hashes lies within
`max_distance` bits of its counterpart (a re-encoded or re-keyed copy; two
edits of one source differ in their target hashes and are both kept).

The rule is order-free, so that a single machine and a Beam runner, which
see pairs in different orders and groupings, drop the same ones: a pair is
dropped iff some near-duplicate ranks before it, rank being (higher
priority first, then smaller key). Candidates come from locality-sensitive
banding: the source- and target-middle hashes are each cut into
`max_distance + 1` bands, and two pairs within `max_distance` bits agree on
at least one band of each (pigeonhole), so grouping by every (source band,
target band) pair finds all near-duplicates with no all-pairs pass.
"""

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from scipy import fft

# Indices into a signature of the hashes used for banding.
_SOURCE_MIDDLE, _TARGET_MIDDLE = 1, 4


@dataclasses.dataclass(frozen=True)
class DedupConfig:
  max_distance: int = 6


def phash(image: np.ndarray) -> int:
  """64-bit perceptual hash of uint8[H, W, 3]: signs of the 8x8 lowest DCT
  coefficients of the 32x32 luma thumbnail against their median (DC left
  out of the median)."""
  gray = Image.fromarray(np.asarray(image, np.uint8)).convert("L")
  small = np.asarray(
    gray.resize((32, 32), Image.Resampling.BILINEAR), np.float64
  )
  low = fft.dctn(small, norm="ortho")[:8, :8].ravel()
  bits = low > np.median(low[1:])
  return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def signature(source: np.ndarray, target: np.ndarray) -> list[str]:
  """Hex pHashes of the first, middle and last source and target frames."""
  out = []
  for frames in (source, target):
    t = len(frames)
    out.extend(f"{phash(frames[i]):016x}" for i in (0, (t - 1) // 2, t - 1))
  return out


def distance(a: Sequence[str], b: Sequence[str]) -> int:
  """Largest Hamming distance between corresponding hashes."""
  return max(bin(int(x, 16) ^ int(y, 16)).count("1") for x, y in zip(a, b))


def _bands(hash_hex: str, count: int) -> list[int]:
  value = int(hash_hex, 16)
  edges = [64 * i // count for i in range(count + 1)]
  return [
    (value >> lo) & ((1 << (hi - lo)) - 1)
    for lo, hi in zip(edges[:-1], edges[1:])
  ]


def band_keys(sig: Sequence[str], max_distance: int) -> list[str]:
  """The LSH buckets of a signature (see the module docstring)."""
  n = max_distance + 1
  src = _bands(sig[_SOURCE_MIDDLE], n)
  tgt = _bands(sig[_TARGET_MIDDLE], n)
  return [f"{i}:{src[i]:x}/{j}:{tgt[j]:x}" for i in range(n) for j in range(n)]


@dataclasses.dataclass(frozen=True)
class Candidate:
  """What de-duplication needs to know about an accepted pair."""

  key: str
  priority: float
  signature: tuple[str, ...]

  @property
  def rank(self) -> tuple[float, str]:
    return (-self.priority, self.key)


def dominated_in_group(
  group: Sequence[Candidate], max_distance: int
) -> Iterator[tuple[str, Candidate]]:
  """(key, better near-duplicate) for each pair of a bucket."""
  for i, a in enumerate(group):
    for b in group[i + 1 :]:
      if a.key == b.key or distance(a.signature, b.signature) > max_distance:
        continue
      loser, winner = (a, b) if b.rank < a.rank else (b, a)
      yield loser.key, winner


def best_dominator(winners: Iterable[Candidate]) -> str:
  """The key a duplicate is reported against: its best-ranked dominator."""
  return min(winners, key=lambda c: c.rank).key


def find_duplicates(
  candidates: Iterable[Candidate], config: DedupConfig = DedupConfig()
) -> dict[str, str]:
  """{dropped key: key of its best-ranked near-duplicate} over a whole set."""
  buckets: dict[str, list[Candidate]] = {}
  for c in candidates:
    for k in band_keys(c.signature, config.max_distance):
      buckets.setdefault(k, []).append(c)
  winners: dict[str, list[Candidate]] = {}
  for group in buckets.values():
    for loser, winner in dominated_in_group(group, config.max_distance):
      winners.setdefault(loser, []).append(winner)
  return {k: best_dominator(v) for k, v in winners.items()}
