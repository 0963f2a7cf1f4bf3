"""Stage 4a: semantic verification of a scaffold.

A scaffold must show what the edit introduced: it must look like the edited
region of the target, and not like the same region of the source (else the
"edit" did not bring anything new, e.g. an object that only moved, or a
grounding failure). Similarities are cosines between image embeddings of
the scaffold's shown pixels and of the region's pixels in the target and
in the source, both at the scaffold's frame.

The default embedder is a joint RGB colour histogram (square-rooted and
L2-normalised, so the cosine is the Bhattacharyya coefficient); a learned
image embedding (SigLIP, the MLLM's vision tower) plugs in through the
`Embedder` protocol.
"""

import dataclasses
from typing import Protocol

import numpy as np

from kiwi_jax.refvie.grounding import Grounding
from kiwi_jax.refvie.synthesis import Scaffold
from kiwi_jax.refvie.types import Pair, Rejected


class Embedder(Protocol):
  """Maps the masked pixels of an image to a unit vector."""

  def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """image: uint8[H, W, 3]; mask: bool[H, W] -> float32[D], |v| = 1."""


@dataclasses.dataclass(frozen=True)
class ColorHistogramEmbedder:
  """sqrt of the normalised joint RGB histogram with `bins` per channel."""

  bins: int = 8

  def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pixels = image[mask].astype(np.int32) * self.bins // 256
    index = (pixels[:, 0] * self.bins + pixels[:, 1]) * self.bins + pixels[:, 2]
    hist = np.bincount(index, minlength=self.bins**3).astype(np.float32)
    total = hist.sum()
    if total == 0:
      return hist
    vector = np.sqrt(hist / total)
    return vector / np.linalg.norm(vector)


@dataclasses.dataclass(frozen=True)
class VerificationConfig:
  """Acceptance thresholds on embedding cosines."""

  min_target_similarity: float = 0.7
  min_margin: float = 0.15


@dataclasses.dataclass(frozen=True)
class Verifier:
  """Checks a scaffold against the target and the source (module docstring)."""

  config: VerificationConfig = VerificationConfig()
  embedder: Embedder = ColorHistogramEmbedder()

  def __call__(
    self, pair: Pair, grounding: Grounding, scaffold: Scaffold
  ) -> dict[str, float]:
    cfg = self.config
    shown = self.embedder(scaffold.image, scaffold.alpha)
    frame = scaffold.frame
    target = self.embedder(pair.target[frame], scaffold.region)
    # The source side uses the whole edited region of that frame: an object
    # that only moved still shows up there.
    source = self.embedder(pair.source[frame], grounding.mask[frame])
    sim_target = float(shown @ target)
    sim_source = float(shown @ source)
    scores = {
      "target_similarity": sim_target,
      "source_similarity": sim_source,
      "margin": sim_target - sim_source,
    }
    if sim_target < cfg.min_target_similarity:
      raise Rejected(
        "scaffold_mismatch",
        f"scaffold/target similarity {sim_target:.3f} "
        f"< {cfg.min_target_similarity}",
        scores,
      )
    if sim_target - sim_source < cfg.min_margin:
      raise Rejected(
        "scaffold_matches_source",
        f"scaffold is about as close to the "
        f"source ({sim_source:.3f}) as to the target ({sim_target:.3f})",
        scores,
      )
    return scores
