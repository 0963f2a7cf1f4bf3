"""Optional pass that pre-encodes VAE latents (and MLLM inputs) to ArrayRecord.

Training stages 2-3 run the frozen VAE on every source, target and reference
(reference §4.3). Encoding once and caching the latents lets training skip the VAE.
The cache is ordinary ArrayRecord shards of records with
`record_type="latent"`; `pipeline.make_iterator` reads them like media
records and yields `source_latents`, `target_latents`, `ref_latents` and the
cached `mllm` inputs instead of frames.

Caching freezes per-example randomness: the training-time reference shrink
(reference §4.5) is drawn once, when the cache is built, instead of every epoch.

Usage (the encoder is any callable, e.g. a jitted Wan VAE encode):

  it = pipeline.make_iterator(specs, examples.ExampleConfig(train=True),
                              pipeline.PipelineConfig(shuffle=False,
                                                      num_epochs=1))
  build_latent_cache(it, vae_encode, "/data/latents/stage3")
"""

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from etils import epath

from kiwi_jax.data import examples as examples_lib
from kiwi_jax.data import records
from kiwi_jax.media import pixels

# videos float32[B, T, H, W, 3] in [-1, 1] -> latents [B, t, h, w, c].
VideoEncoder = Callable[[np.ndarray], Any]


def _latent_records(
  batches: Iterable[Mapping[str, Any]],
  encode: VideoEncoder,
  dtype: np.dtype,
) -> Iterator[bytes]:
  for batch in batches:
    encoded = {}
    for name, field in (
      ("source_latents", "source_video"),
      ("target_latents", "target_video"),
      ("ref_latents", "ref_image"),
    ):
      if field not in batch:
        continue
      video = batch[field]
      if field == "ref_image":
        video = video[:, None]  # The reference is encoded as a 1-frame clip.
      encoded[name] = np.asarray(encode(pixels.to_unit_training(video))).astype(
        dtype
      )
    mllm = batch.get("mllm", {})
    for i in range(len(batch["prompt"])):
      record = {
        "record_type": "latent",
        "key": str(batch["key"][i]),
        "prompt": str(batch["prompt"][i]),
      }
      for name, latents in encoded.items():
        record[name] = latents[i]
      for name, value in mllm.items():
        record[examples_lib.MLLM_PREFIX + name] = np.asarray(value[i])
      yield records.serialize(record)


def build_latent_cache(
  batches: Iterable[Mapping[str, Any]],
  encode: VideoEncoder,
  out_dir: str | epath.Path,
  *,
  num_shards: int = 1,
  prefix: str = "latents",
  dtype: Any = np.float32,
) -> list[epath.Path]:
  """Encodes every batch of a (finite) media pipeline and writes the cache.

  Args:
    batches: batches from `pipeline.make_iterator` over media records, run
      for one epoch (`num_epochs=1`) so each example is cached once.
    encode: video encoder, see `VideoEncoder`.
    out_dir: where the shards go (local or `etils.epath` path).
    num_shards: ArrayRecord files to spread records over.
    prefix: shard file name prefix.
    dtype: storage dtype of the latents (e.g. `ml_dtypes.bfloat16`).

  Returns:
    The shard paths.
  """
  return records.write_shards(
    _latent_records(batches, encode, np.dtype(dtype)),
    out_dir,
    prefix=prefix,
    num_shards=num_shards,
  )
