"""Command line: convert released Kiwi-Edit checkpoints, export, verify.

  # DiffSynth training checkpoint + base models -> kiwi_jax directory
  python -m converters.convert diffsynth \\
      --checkpoint stage3.safetensors --base-dit Wan2.2-TI2V-5B/ \\
      --vae Wan2.2-TI2V-5B/Wan2.2_VAE.pth --qwen Qwen2.5-VL-3B-Instruct/ \\
      --ref-pad-first false --out kiwi-5b-stage3 [--lora merge|keep]

  # diffusers KiwiEditPipeline directory -> kiwi_jax directory
  python -m converters.convert diffusers --source kiwi-edit-5b-diffusers \\
      --out kiwi-5b

  # kiwi_jax directory -> diffusers layout
  python -m converters.convert export --model kiwi-5b --out kiwi-5b-diffusers

  # a Wan DiT checkpoint (Wan, DiffSynth or diffusers names) -> diffusers
  python -m converters.convert wan-dit --src dit.safetensors --dst out/ \\
      --variant wan2.2-ti2v-5b

  # max abs error per component vs the PyTorch stack (same source flags)
  python -m converters.convert verify --model kiwi-5b diffusers \\
      --source kiwi-edit-5b-diffusers

``--variant`` (``kiwi-5b``, ``kiwi-14b``, ``tiny``) replaces the config
inferred from the source's config files and tensor shapes. The output
directory is written atomically with the umask's modes; on any error
nothing is left behind. An ``--out`` that is one of the inputs, or a folder
holding one, is refused before anything is read. Bad input exits 2 with
one ``error:`` line (a key report lists every bad key); an existing
``--out`` without ``--overwrite`` exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax.numpy as jnp

from kiwi_jax.converters.assign import CheckpointMismatchError
from kiwi_jax.converters.checkpoint_io import CheckpointError
from kiwi_jax.converters.kiwi import configs as kiwi_configs
from kiwi_jax.converters.kiwi import convert as kiwi_conv
from kiwi_jax.converters.kiwi import sources as kiwi_sources
from kiwi_jax.models.kiwi.config import VARIANTS as KIWI_VARIANTS
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.utils.paths import OutputIsInputError, refuse_inputs_as_outputs

PROG = "python -m converters.convert"


def _bool(text: str) -> bool:
  # argparse's type=bool turns "false" into True (a reference pitfall).
  lowered = text.lower()
  if lowered in ("true", "1", "yes"):
    return True
  if lowered in ("false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_source_flags(p: argparse.ArgumentParser, layout: str) -> None:
  p.set_defaults(layout=layout)
  if layout == "diffusers":
    p.add_argument(
      "--source", required=True, help="diffusers KiwiEditPipeline directory"
    )
    return
  p.add_argument(
    "--checkpoint",
    required=True,
    help="DiffSynth Kiwi .safetensors (trainable tensors)",
  )
  p.add_argument(
    "--base-dit",
    required=True,
    help="Wan DiT safetensors file or shard directory",
  )
  p.add_argument("--vae", required=True, help="Wan2.2_VAE.pth")
  p.add_argument("--qwen", required=True, help="Qwen2.5-VL directory")
  p.add_argument(
    "--lora",
    choices=kiwi_sources.LORA_MODES,
    default="merge",
    help="merge the LoRA factors into the weights, or keep "
    "them as LoRA parameters (Qwen q/k/v/o and MLP, DiT "
    "attention and FFN; the 14B stage 2 continues from them)",
  )
  p.add_argument(
    "--ref-pad-first",
    type=_bool,
    default=None,
    help="true|false; required for reference-mode checkpoints",
  )


def _sources(args) -> kiwi_sources.KiwiSources:
  if args.layout == "diffsynth":
    return kiwi_sources.from_diffsynth(
      args.checkpoint,
      args.base_dit,
      args.vae,
      args.qwen,
      lora=args.lora,
      ref_pad_first=args.ref_pad_first,
    )
  return kiwi_sources.from_diffusers(args.source)


def _base(args, sources) -> KiwiEditConfig:
  if args.variant:
    return KiwiEditConfig.from_variant(args.variant)
  notes: list[str] = []
  cfg = kiwi_configs.base_config(sources, notes)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  return cfg


def _inputs(args) -> list[tuple[str, str]]:
  """``(flag, path)`` of every input the command reads."""
  if args.command == "export":
    return [("--model", args.model)]
  if args.command == "wan-dit":
    return [("--src", args.src)]
  if args.layout == "diffusers":
    return [("--source", args.source)]
  return [
    ("--checkpoint", args.checkpoint),
    ("--base-dit", args.base_dit),
    ("--vae", args.vae),
    ("--qwen", args.qwen),
  ]


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog=PROG, description="Kiwi-Edit checkpoint converter."
  )
  cmds = p.add_subparsers(dest="command", required=True)
  for layout in ("diffsynth", "diffusers"):
    sp = cmds.add_parser(layout, help=f"convert a {layout} checkpoint")
    _add_source_flags(sp, layout)
    sp.add_argument("--out", required=True)
    sp.add_argument(
      "--variant",
      default=None,
      choices=sorted(KIWI_VARIANTS),
      help="a named model config instead of the one inferred "
      "from the source's files and shapes",
    )
    sp.add_argument(
      "--dtype",
      default=None,
      help="parameter dtype, e.g. bfloat16 (default: model's)",
    )
    sp.add_argument("--overwrite", action="store_true")
  ex = cmds.add_parser("export", help="kiwi_jax directory -> diffusers")
  ex.add_argument("--model", required=True)
  ex.add_argument("--out", required=True)
  ex.add_argument("--overwrite", action="store_true")
  ve = cmds.add_parser("verify", help="JAX vs PyTorch, per component")
  ve.add_argument("--model", required=True)
  ve.add_argument("--components", default="mllm,dit,vae")
  vsub = ve.add_subparsers(dest="source_layout", required=True)
  for layout in ("diffsynth", "diffusers"):
    _add_source_flags(vsub.add_parser(layout), layout)
  wd = cmds.add_parser(
    "wan-dit",
    help="a Wan DiT checkpoint -> diffusers "
    "WanTransformer3DModel (+ Kiwi condition embedders)",
  )
  wd.add_argument(
    "--src",
    required=True,
    help="safetensors file/folder or .pth (Wan, DiffSynth or diffusers names)",
  )
  wd.add_argument("--dst", required=True, help="output folder")
  wd.add_argument(
    "--variant",
    default="wan2.2-ti2v-5b",
    help="DiT variant (see WanDiTConfig.from_variant)",
  )
  wd.add_argument(
    "--source_condition",
    action="store_true",
    help="the checkpoint has vae_condition (source injection)",
  )
  wd.add_argument(
    "--reference_condition",
    action="store_true",
    help="the checkpoint has ref_vae_condition",
  )
  wd.add_argument(
    "--ref_pad_first",
    action="store_true",
    help="reference tokens lead the sequence",
  )
  return p


def _wan_dit(args) -> None:
  from kiwi_jax.converters import wan_dit
  from kiwi_jax.models.dit.config import WanDiTConfig

  cfg = WanDiTConfig.from_variant(
    args.variant,
    source_condition=args.source_condition,
    reference_condition=args.reference_condition,
    ref_pad_first=args.ref_pad_first,
  )
  print(f"wrote {wan_dit.convert_to_diffusers(args.src, args.dst, cfg)}")


def _error(message: str, code: int) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr)
  return code


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    if args.command == "wan-dit":
      refuse_inputs_as_outputs(
        [("--dst", args.dst)], _inputs(args), folders=["--dst"]
      )
    elif args.command != "verify":
      refuse_inputs_as_outputs(
        [("--out", args.out)], _inputs(args), folders=["--out"]
      )
  except OutputIsInputError as e:
    return _error(str(e), 2)
  try:
    if args.command in ("diffsynth", "diffusers"):
      sources = _sources(args)
      dtype = jnp.dtype(args.dtype) if args.dtype else None
      out, rep = kiwi_conv.convert(
        sources,
        args.out,
        _base(args, sources),
        dtype=dtype,
        overwrite=args.overwrite,
      )
      print(json.dumps(rep, indent=2))
      print(f"wrote {out}")
    elif args.command == "wan-dit":
      _wan_dit(args)
    elif args.command == "export":
      from kiwi_jax.converters.kiwi.export import export_diffusers
      from kiwi_jax.models.kiwi import checkpoint

      model = checkpoint.load(args.model)
      out = export_diffusers(
        model,
        args.out,
        processor_dir=checkpoint.processor_dir(args.model),
        overwrite=args.overwrite,
      )
      print(f"wrote {out}")
    else:
      from kiwi_jax.converters.kiwi.verify import verify
      from kiwi_jax.models.kiwi import checkpoint

      model = checkpoint.load(args.model)
      errors = verify(
        model, _sources(args), components=tuple(args.components.split(","))
      )
      width = max(map(len, errors), default=0)
      for name, err in errors.items():
        print(f"{name:<{width}}  max abs error {err:.3e}")
  except FileExistsError as e:
    return _error(str(e), 1)
  except (CheckpointMismatchError, CheckpointError, ValueError) as e:
    return _error(str(e), 2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
