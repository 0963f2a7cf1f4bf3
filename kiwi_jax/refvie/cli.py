"""Command line: instruction-edit pairs -> RefVIE quadruplets.

  # Single machine, 8 worker processes, resumable (re-run to resume):
  python -m kiwi_jax.refvie --csv=pool.csv --base_dir=/data \\
      --out_dir=/data/refvie_built --num_workers=8

  # Apache Beam (DirectRunner here; any runner through --beam_arg):
  python -m kiwi_jax.refvie --csv=pool.csv --base_dir=/data \\
      --out_dir=gs://bucket/refvie --runner=beam \\
      --beam_arg=--runner=DataflowRunner --beam_arg=--project=my-project

  # From ArrayRecord shards of kiwi_jax.data.build_records (media inline):
  python -m kiwi_jax.refvie --records=/data/records/pool \\
      --out_dir=/data/refvie_built

  # Also ArrayRecord shards for training (or later, with
  # python -m kiwi_jax.data.build_records on refvie.csv):
  python -m kiwi_jax.refvie --csv=pool.csv --base_dir=/data \\
      --out_dir=/data/refvie_built --records_dir=/data/records/refvie

Inputs: reference-format CSVs (`src_video,tgt_video,prompt`, optional
`iid`; reference §6.1), RefVIE parquet chunks, or ArrayRecord shards (their
source and target bytes are decoded in memory; needs --media=copy); a
reference image, if any, is ignored. Prints the report (counts per stage
and reason); exit status 0 (1 when --records_dir is given and a
quadruplet fails the record check; 2, with one line on stderr and nothing
written, when an input cannot be read or an output folder would hold or
replace an input).
"""

import argparse
import dataclasses
import json
import sys

from etils import epath

from kiwi_jax.data import metadata
from kiwi_jax.refvie import grounding, quality, synthesis
from kiwi_jax.refvie import run_local as pipeline_local
from kiwi_jax.refvie.process import MEDIA_MODES, Pipeline
from kiwi_jax.utils import paths

PROG = "python -m kiwi_jax.refvie"


def _pipeline(args) -> Pipeline:
  return Pipeline(
    quality=quality.QualityFilter(
      dataclasses.replace(
        quality.LOSSY if args.lossy else quality.QualityConfig(),
        min_side=args.min_side,
        min_frames=args.min_frames,
      )
    ),
    grounder=grounding.DiffGrounder(
      grounding.LOSSY if args.lossy else grounding.GroundingConfig()
    ),
    synthesizer=synthesis.ReferenceSynthesizer(
      synthesis.SynthesisConfig(canvas_size=args.canvas_size)
    ),
    max_frames=args.max_frames,
    media=args.media,
    analysis_max_side=args.analysis_max_side or None,
  )


def _inputs(args) -> list[tuple[str, str | epath.Path]]:
  """Every file the run reads, by flag (globs expanded)."""
  inputs = [("--csv", path) for path in args.csv or ()]
  if args.parquet:
    pattern = epath.Path(args.parquet)
    if not any(pattern.parent.glob(pattern.name)):
      raise FileNotFoundError(f"--parquet {args.parquet}: no file matches")
    inputs += [("--parquet", p) for p in pattern.parent.glob(pattern.name)]
  if args.records:
    inputs += [("--records", p) for p in metadata.record_shards(args.records)]
  if args.base_dir:
    inputs.append(("--base_dir", args.base_dir))
  return inputs


def _refuse_outputs_over_inputs(args) -> None:
  """Raises (ValueError) when --out_dir or --records_dir would write over
  an input, or --records_dir over the run's own output."""
  inputs = _inputs(args)
  paths.refuse_inputs_as_outputs(
    outputs=[("--out_dir", args.out_dir)], inputs=inputs, folders=["--out_dir"]
  )
  if args.records_dir:
    paths.refuse_inputs_as_outputs(
      outputs=[("--records_dir", args.records_dir)],
      inputs=inputs + [("--out_dir", args.out_dir)],
      folders=["--records_dir"],
    )
    # pylint: disable-next=g-import-not-at-top
    from kiwi_jax.data import build_folder

    build_folder.check_output_folder(args.records_dir, "--records_dir")


def _rows(args) -> list[metadata.Row]:
  rows = []
  for path in args.csv or ():
    rows.extend(metadata.read_csv_rows(path))
  if args.parquet:
    pattern = epath.Path(args.parquet)
    paths = sorted(pattern.parent.glob(pattern.name))
    if not paths:
      raise FileNotFoundError(f"no file matches {args.parquet}")
    rows.extend(metadata.read_parquet_rows(paths))
  if args.records:
    rows.extend(metadata.read_record_rows(metadata.record_shards(args.records)))
  return [
    dataclasses.replace(r, ref_image=None, ref_image_bytes=None) for r in rows
  ]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog=PROG,
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  parser.add_argument(
    "--csv", action="append", help="reference-format CSV (repeatable)"
  )
  parser.add_argument("--parquet", help="parquet chunk path or glob")
  parser.add_argument(
    "--records",
    help="ArrayRecord shard directory, shard or glob "
    "(kiwi_jax.data.build_records output)",
  )
  parser.add_argument(
    "--base_dir",
    default=None,
    help="directory the media paths are relative to "
    "(needed with --csv/--parquet)",
  )
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--runner", choices=("local", "beam"), default="local")
  parser.add_argument(
    "--beam_arg",
    action="append",
    default=[],
    help="Beam pipeline option (repeatable)",
  )
  parser.add_argument("--num_workers", type=int, default=0)
  parser.add_argument("--chunk_size", type=int, default=64)
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--no_progress", action="store_true")
  parser.add_argument("--media", choices=MEDIA_MODES, default="copy")
  parser.add_argument(
    "--records_dir",
    default=None,
    help="also write the quadruplets as ArrayRecord shards "
    "(kiwi_jax.data.record_builder) here",
  )
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--max_frames", type=int, default=81)
  parser.add_argument(
    "--analysis_max_side",
    type=int,
    default=512,
    help="stages look at copies at most this large "
    "(0: full size); subject scaffolds are cut at full size",
  )
  parser.add_argument("--min_side", type=int, default=64)
  parser.add_argument("--min_frames", type=int, default=1)
  parser.add_argument(
    "--lossy",
    action="store_true",
    help="thresholds for separately lossy-encoded sources "
    "and targets (quality.LOSSY, grounding.LOSSY)",
  )
  parser.add_argument(
    "--canvas_size",
    type=int,
    default=None,
    help="square scaffold side for subject edits; default "
    "keeps the object's native resolution",
  )
  args = parser.parse_args(argv)
  if not (args.csv or args.parquet or args.records):
    parser.error("give --csv, --parquet and/or --records")
  if (args.csv or args.parquet) and not args.base_dir:
    parser.error("--csv and --parquet need --base_dir")
  if args.records and args.media != "copy":
    parser.error("--records needs --media=copy (its media has no path)")
  try:
    # Before any work: a refused output leaves everything as it was.
    _refuse_outputs_over_inputs(args)
    rows = _rows(args)
  except (FileNotFoundError, ValueError) as e:
    # ValueError covers OutputIsInputError, OutputFolderError and
    # metadata's column checks.
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  # Records alone: nothing is read from base_dir (ArrayRecord media is
  # inline), but the run's manifest and writers still take one.
  args.base_dir = args.base_dir or "."
  pipeline = _pipeline(args)
  if args.runner == "beam":
    try:
      # Optional dependency, imported on use.
      # pylint: disable-next=g-import-not-at-top
      from kiwi_jax.refvie import run_beam as pipeline_beam
    except ImportError as e:
      print(
        f"--runner=beam needs apache-beam ({e}); pip install apache-beam",
        file=sys.stderr,
      )
      return 2
    report = pipeline_beam.run_beam(
      rows,
      args.base_dir,
      args.out_dir,
      pipeline,
      beam_args=args.beam_arg or ["--runner=DirectRunner"],
    )
  else:
    report = pipeline_local.run_local(
      rows,
      args.base_dir,
      args.out_dir,
      pipeline,
      num_workers=args.num_workers,
      chunk_size=args.chunk_size,
      overwrite=args.overwrite,
      progress=not args.no_progress,
    )
  print(json.dumps(report, indent=2))
  if args.records_dir:
    # pylint: disable-next=g-import-not-at-top
    from kiwi_jax.data import record_builder

    try:
      built = record_builder.build_array_records(
        metadata.read_csv_rows(epath.Path(args.out_dir) / "refvie.csv"),
        args.out_dir,
        args.records_dir,
        options=record_builder.CheckOptions(
          min_frames=1, max_frames=args.max_frames
        ),
        policy="fail",
        num_shards=args.num_shards,
        prefix="refvie",
      )
    except record_builder.RecordBuildError as e:
      print(str(e), file=sys.stderr)
      return 1
    print(f"ArrayRecord shards in {args.records_dir}: {built.summary()}")
  return 0
