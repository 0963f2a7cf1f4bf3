"""The Grain input pipeline: records -> shuffled, decoded, mixed batches.

Per source (a directory of ArrayRecord shards from `record_builder` /
`latent_cache`, or a prepared `tfds` directory):

  random-access source -> seeded shuffle (a new order each epoch) ->
  repeat -> decode + crop + reference augmentation + MLLM hook
  (`examples.DecodeExample`) -> batch -> this process's batches

Sources are then mixed batch by batch with the configured weights: every
batch holds one kind of sample, as in the reference's `MixDataloader`
(reference §4.4, where each micro-step is one sample of one type). Grain's
`MapDataset.mix` interleaves deterministically in proportion to the weights,
so 1:1:1 reproduces the reference's round robin exactly.

Everything before batching is a pure function of (seed, index), so the
iterator state (`get_state`/`set_state`, or `grain.checkpoint` with Orbax)
restores the exact next batch, with or without worker processes.

The order of the examples does not depend on the number of processes: with
P processes, each batching `batch_size` examples (the global batch is P
times that), process p takes local batches p, P + p, 2P + p, ... of the one
shuffled stream. So global batch k is the same examples, in the same rows,
on 1 process or on many (`to_global_batch` stacks process 0's rows
first). Each process checkpoints its own iterator state: resume on the
same number of processes.
"""

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np
from etils import epath

from kiwi_jax.data import examples as examples_lib
from kiwi_jax.data import records


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One dataset of a mixture.

  Attributes:
    path: ArrayRecord shard directory or file, or prepared tfds directory
      (local or any `etils.epath` filesystem).
    weight: relative share of batches drawn from this source.
    name: label for logs; batches carry the source's position as
      `source_id`.
    split: split to read from a tfds directory.
    example: per-source override of the pipeline's `ExampleConfig` (e.g. a
      larger pixel budget for image edits, as in stage 1).
  """

  path: str
  weight: float = 1.0
  name: str = ""
  split: str = "train"
  example: examples_lib.ExampleConfig | None = None


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Shuffling, batching and parallelism.

  Attributes:
    batch_size: examples per batch, per process.
    seed: seeds the shuffles and the random transforms.
    shuffle: shuffle each source (a new order each epoch).
    num_epochs: passes over each source; None repeats forever (the mixture
      then never ends, as in the reference where exhausted loaders restart).
    num_workers: worker processes for decoding (0 decodes in the caller).
    num_threads: reader threads per process.
    prefetch: batches read ahead per process.
  """

  batch_size: int = 1
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  num_workers: int = 0
  num_threads: int = 2
  prefetch: int = 2


def make_source(path: str | epath.Path, split: str = "train"):
  """A random-access source of raw records (bytes or tfds example dicts)."""
  path = epath.Path(path)
  if path.is_dir() and (path / "dataset_info.json").exists():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds.builder_from_directory(str(path)).as_data_source(split)
  return grain.sources.ArrayRecordDataSource(records.shard_paths(path))


def process_batches(
  ds: grain.MapDataset,
  shard_index: int | None,
  shard_count: int | None,
  *,
  finite: bool,
) -> grain.MapDataset:
  """This process's batches of a batched dataset: batches p, P + p, ...

  A ``finite`` dataset is first cut to a multiple of P batches, so that
  every process sees the same number of batches and steps stay in
  lockstep. Defaults to this JAX process.
  """
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    shard_index, shard_count = jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard {shard_index} out of range for {shard_count}")
  if finite:
    if len(ds) < shard_count:
      raise ValueError(f"{len(ds)} batches cannot feed {shard_count} processes")
    ds = ds[: len(ds) // shard_count * shard_count]
  return ds if shard_count == 1 else ds[shard_index::shard_count]


class _TagSource(grain.transforms.Map):
  """Adds `source_id: int32[B]`, the source's position in the mixture."""

  def __init__(self, source_id: int):
    self.source_id = source_id

  def map(self, element):
    size = len(element["prompt"])
    return {**element, "source_id": np.full((size,), self.source_id, np.int32)}


def source_dataset(
  spec: SourceSpec,
  source_id: int,
  example_cfg: examples_lib.ExampleConfig,
  cfg: PipelineConfig,
  *,
  mllm_transform: examples_lib.MllmTransform | None = None,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> grain.MapDataset:
  """The batched dataset of one source (see the module docstring)."""
  source = make_source(spec.path, spec.split)
  ds = grain.MapDataset.source(source)
  # Distinct seeds per source: equal-length sources must not share orders.
  seed = cfg.seed + 1009 * source_id
  if cfg.shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(cfg.num_epochs)
  # Seeded by the index in the one stream, whatever the process count.
  ds = ds.random_map(
    examples_lib.DecodeExample(spec.example or example_cfg, mllm_transform),
    seed=seed + 1,
  )
  ds = ds.batch(
    cfg.batch_size, drop_remainder=True, batch_fn=examples_lib.stack_examples
  )
  ds = process_batches(
    ds, shard_index, shard_count, finite=cfg.num_epochs is not None
  )
  return ds.map(_TagSource(source_id))


def mixed_dataset(
  specs: Sequence[SourceSpec],
  example_cfg: examples_lib.ExampleConfig,
  cfg: PipelineConfig,
  **kwargs,
) -> grain.MapDataset:
  """Batches of all sources, interleaved in proportion to their weights."""
  if not specs:
    raise ValueError("need at least one source")
  parts = [
    source_dataset(spec, i, example_cfg, cfg, **kwargs)
    for i, spec in enumerate(specs)
  ]
  if len(parts) == 1:
    return parts[0]
  weights = [spec.weight for spec in specs]
  if min(weights) <= 0:
    raise ValueError(f"source weights must be positive, got {weights}")
  return grain.MapDataset.mix(parts, weights)


def make_iterator(
  specs: Sequence[SourceSpec],
  example_cfg: examples_lib.ExampleConfig,
  cfg: PipelineConfig,
  **kwargs,
) -> grain.DatasetIterator:
  """The batch iterator; `get_state`/`set_state` restore it exactly.

  Keyword arguments go to `source_dataset` (mllm_transform, shard_index,
  shard_count). With `cfg.num_workers > 0` the MLLM hook and everything it
  holds must be picklable.
  """
  ds = mixed_dataset(specs, example_cfg, cfg, **kwargs)
  ds = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch
    )
  )
  if cfg.num_workers > 0:
    _allow_workers_outside_absl()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch
      )
    )
  return iter(ds)


def _allow_workers_outside_absl():
  # Grain's worker processes read absl flags; outside `absl.app.run` they are
  # unparsed and reading them raises UnparsedFlagAccessError.
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def to_global_batch(batch, mesh, logical_batch_axis: str = "act_batch"):
  """Numeric fields -> global jax arrays sharded over the batch axes.

  Text fields (`prompt`, `key`: object arrays) have no device form; they stay
  process-local numpy (the MLLM hook turns prompts into token arrays first).
  """
  from kiwi_jax import sharding  # pylint: disable=g-import-not-at-top

  def is_numeric(x):
    return isinstance(x, np.ndarray) and x.dtype != object

  numeric = {
    k: v for k, v in batch.items() if isinstance(v, dict) or is_numeric(v)
  }
  host = {k: v for k, v in batch.items() if k not in numeric}
  return {**host, **sharding.host_to_global(numeric, mesh, logical_batch_axis)}
