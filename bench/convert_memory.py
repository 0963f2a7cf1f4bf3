"""Peak host memory of converting a 5B-shaped Kiwi-Edit checkpoint.

Every tensor has its real Kiwi-5B shape (Wan2.2-TI2V-5B DiT widths, the
Qwen2.5-VL-3B embedding of 151936 x 2048, the full Wan2.2 VAE, the Kiwi
queries, connectors and embedders); ``--layers`` limits the number of DiT
blocks, Qwen decoder layers and vision blocks so that the converted model
fits beside other work on a small machine (``--layers 0`` keeps them all:
the full model, ~19 GB in bf16). On the CPU backend the converted state
itself lives in host memory, so the bench reports

  overhead = peak anonymous RSS - before - bytes of the converted state,

the transient host memory of the conversion. Streaming means the overhead
stays near the largest single source tensor (or stacked parameter), far
below the model size.

Sources:
  --source abstract   tensors made on demand, one at a time (no disk);
  --source files      a DiffSynth-layout checkpoint written to --dir first
                      (safetensors, memory-mapped reads), converted from disk.

  python bench/convert_memory.py --layers 2 --source abstract
  python bench/convert_memory.py --layers 2 --source files --dir /tmp/k5b
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time

import numpy as np

# Run as a script from anywhere: the repository root on the path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def rss_bytes(field: str = "RssAnon") -> int:
  """Resident memory of this process from /proc (``RssAnon``: heap and
  anonymous maps, the memory a conversion allocates; ``VmRSS`` also counts
  the page cache of memory-mapped checkpoint files, which the kernel can
  drop at will)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return 0


class PeakRSS:
  """Samples VmRSS every few milliseconds in a thread (ru_maxrss cannot be
  reset, so a sampled peak isolates one phase)."""

  def __init__(self, field="RssAnon", interval=0.005):
    self.field, self.interval = field, interval
    self.peak, self._stop = 0, False

  def __enter__(self):
    self.peak = rss_bytes(self.field)
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop:
      self.peak = max(self.peak, rss_bytes(self.field))
      time.sleep(self.interval)

  def __exit__(self, *exc):
    self._stop = True
    self._thread.join()
    self.peak = max(self.peak, rss_bytes(self.field))


def config(layers: int, dtype):
  from kiwi_jax.models.kiwi.config import KiwiEditConfig

  cfg = KiwiEditConfig.from_variant("kiwi-5b")
  if layers:
    v = cfg.mllm.vision
    vision = dataclasses.replace(
      v,
      depth=layers,
      fullatt_block_indexes=tuple(
        i for i in v.fullatt_block_indexes if i < layers
      )
      or (layers - 1,),
    )
    text = dataclasses.replace(cfg.mllm.text, num_layers=layers)
    cfg = cfg.replace(
      dit=cfg.dit.replace(num_layers=layers),
      mllm=cfg.mllm.replace(vision=vision, text=text),
    )
  return cfg.replace(
    dit=cfg.dit.replace(param_dtype=dtype),
    mllm=cfg.mllm.replace(param_dtype=dtype),
    vae=cfg.vae.replace(param_dtype=dtype),
  )


def torch_shapes(cfg) -> dict[str, tuple[int, ...]]:
  """Canonical key -> torch shape, from the plan and the abstract model
  (inverse transforms applied to zero-stride arrays: no memory)."""
  from flax import nnx

  from kiwi_jax.converters.kiwi import convert as kiwi_conv
  from kiwi_jax.models.kiwi.model import abstract_kiwi

  _, abstract = abstract_kiwi(cfg)
  leaves = {
    tuple(p): v.get_value().shape for p, v in nnx.to_flat_state(abstract)
  }
  out = {}
  for km in kiwi_conv.keymaps(cfg):
    shape = (
      leaves[km.jax_path][1:] if km.layer is not None else (leaves[km.jax_path])
    )
    dummy = np.broadcast_to(np.zeros((), np.float32), shape)
    out[km.torch_key] = tuple(km.transform.inverse(dummy).shape)
  return out


def abstract_sources(shapes, dtype):
  """KiwiSources whose tensors are created when read (one at a time)."""
  import ml_dtypes

  from kiwi_jax.converters.checkpoint_io import Checkpoint
  from kiwi_jax.converters.kiwi.sources import KiwiSources

  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
  index = {k: {"shape": s, "dtype": dtype} for k, s in shapes.items()}

  def reader(key, item):
    value = np.full(shapes[key], 0.01, np_dtype)
    return value if item is None else value[item]

  report = {c: "abstract" for c in ("dit", "vae", "qwen")}
  return KiwiSources(
    checkpoint=Checkpoint("abstract 5B-shaped", index, reader),
    layout="abstract",
    report=report,
    ref_pad_first=False,
    qwen_config={},
    mllm_config={},
    dit_config={},
    vae_config={},
    processor_files={},
    lora="merge",
    lora_rank=0,
  )


def write_files(shapes, directory: pathlib.Path):
  """A DiffSynth-layout checkpoint on disk, one component file at a time."""
  import torch
  from safetensors.torch import save_file

  directory.mkdir(parents=True, exist_ok=True)

  def dump(keys, path, rename):
    tensors = {
      rename(k): torch.full(shapes[k], 0.01, dtype=torch.bfloat16) for k in keys
    }
    save_file(tensors, str(path))
    del tensors

  groups = {
    p: [k for k in shapes if k.startswith(p)] for p in ("dit.", "vae.", "qwen.")
  }
  dump(groups["dit."], directory / "dit.safetensors", lambda k: k[4:])
  dump(groups["vae."], directory / "vae.safetensors", lambda k: k[4:])
  (directory / "qwen").mkdir(exist_ok=True)
  dump(
    groups["qwen."], directory / "qwen" / "model.safetensors", lambda k: k[5:]
  )
  kiwi = [k for k in shapes if not k.startswith(("dit.", "vae.", "qwen."))]

  def kiwi_name(k):
    if k.endswith("_queries"):
      return k + ".q"
    return k.replace("mllm.connector.", "mllm.connetor.")

  dump(kiwi, directory / "kiwi.safetensors", kiwi_name)


def _file_paths(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  return dict(
    kiwi_checkpoint=directory / "kiwi.safetensors",
    base_dit=directory / "dit.safetensors",
    vae=directory / "vae.safetensors",
    qwen_dir=directory / "qwen",
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  p.add_argument("--source", default="abstract", choices=("abstract", "files"))
  p.add_argument("--dir", default="/tmp/kiwi_5b_shaped")
  p.add_argument(
    "--write-only",
    action="store_true",
    help="only write the files (run in a child process so the "
    "measuring process starts clean)",
  )
  args = p.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp

  from kiwi_jax.converters.kiwi import convert as kiwi_conv
  from kiwi_jax.converters.kiwi import sources as kiwi_sources

  cfg = config(args.layers, jnp.dtype(args.dtype))
  shapes = torch_shapes(cfg)
  itemsize = jnp.dtype(args.dtype).itemsize
  sizes = {k: int(np.prod(s)) * itemsize for k, s in shapes.items()}
  largest = max(sizes, key=sizes.get)
  if args.write_only:
    write_files(shapes, pathlib.Path(args.dir))
    return
  if args.source == "files":
    subprocess.run(
      [
        sys.executable,
        __file__,
        "--write-only",
        "--layers",
        str(args.layers),
        "--dtype",
        args.dtype,
        "--dir",
        args.dir,
      ],
      check=True,
    )
    paths = _file_paths(pathlib.Path(args.dir))
    sources = kiwi_sources.from_diffsynth(**paths, ref_pad_first=False)
  else:
    sources = abstract_sources(shapes, args.dtype)
  before, before_total = rss_bytes(), rss_bytes("VmRSS")
  start = time.perf_counter()
  with PeakRSS() as peak, PeakRSS("VmRSS") as peak_total:
    _, state = kiwi_conv.build_state(sources, cfg, dtype=jnp.dtype(args.dtype))
    jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  overhead = peak.peak - before - state_bytes
  result = {
    "source": args.source,
    "layers": args.layers or "all",
    "dtype": args.dtype,
    "tensors": len(shapes),
    "checkpoint_GB": round(sum(sizes.values()) / 1e9, 3),
    "state_GB": round(state_bytes / 1e9, 3),
    "largest_tensor": largest,
    "largest_tensor_GB": round(sizes[largest] / 1e9, 3),
    "peak_anon_rss_GB": round(peak.peak / 1e9, 3),
    "anon_rss_before_GB": round(before / 1e9, 3),
    "overhead_GB": round(overhead / 1e9, 3),
    "overhead_over_state": round(overhead / state_bytes, 3),
    "overhead_over_largest_tensor": round(overhead / sizes[largest], 3),
    "peak_vmrss_incl_mmap_GB": round(peak_total.peak / 1e9, 3),
    "vmrss_before_GB": round(before_total / 1e9, 3),
    "ru_maxrss_GB": round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3
    ),
    "seconds": round(seconds, 1),
  }
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
