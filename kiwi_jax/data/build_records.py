"""Command line: RefVIE-format metadata -> checked ArrayRecord or tfds data.

  # Reference CSV (image, video or reference stage), paths relative to base:
  python -m kiwi_jax.data.build_records --csv=train.csv --base_dir=/data \
      --out_dir=/data/records/video --num_shards=64 --policy=skip

  # Released RefVIE parquet chunks (reference images inline):
  python -m kiwi_jax.data.build_records \
      --parquet='/data/refvie_477k/chunk_*.parquet' --base_dir=/data \
      --out_dir=gs://bucket/records/refvie --num_shards=256

  # The same rows as a tfds dataset (readable by tfds.builder_from_directory):
  python -m kiwi_jax.data.build_records --csv=train.csv --base_dir=/data \
      --out_dir=/data/tfds --format=tfds

A build owns --out_dir (see `kiwi_jax.data.build_folder`): the folder may be
new, empty or hold a previous build, which a complete build replaces whole
(other shard counts and prefixes included); a folder holding anything else
is refused. A build that does not finish writes no shard and leaves the
previous build as it was.

Prints the problem report. Exit status: 0 built, 1 the "fail" policy fired,
2 bad input (one line on stderr, nothing written), 130 interrupted.
"""

import argparse
import json
import signal
import sys

from etils import epath

from kiwi_jax.data import build_folder, metadata, record_builder
from kiwi_jax.utils import paths

PROG = "python -m kiwi_jax.data.build_records"


class InputError(ValueError):
  """A flag names something that cannot be read."""


def _expand(pattern: str) -> list[epath.Path]:
  path = epath.Path(pattern)
  if any(c in path.name for c in "*?["):
    matches = sorted(path.parent.glob(path.name))
    if not matches:
      raise InputError(
        f"--parquet {pattern}: no file matches; check the "
        "folder and the pattern (quote it in the shell)"
      )
    return matches
  return [path]


def _check_args(args) -> None:
  for flag in ("num_shards", "num_workers", "min_frames", "max_frames"):
    if getattr(args, flag) < 1:
      raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
  if args.min_frames > args.max_frames:
    raise InputError(
      f"--min_frames {args.min_frames} is above --max_frames "
      f"{args.max_frames}; no video could pass"
    )
  if not epath.Path(args.base_dir).is_dir():
    raise InputError(
      f"--base_dir {args.base_dir}: no such folder (the "
      "media paths in the metadata are relative to it)"
    )


def _inputs(args) -> list[tuple[str, epath.Path]]:
  if args.csv:
    return [("--csv", epath.Path(args.csv))]
  return [("--parquet", c) for c in _expand(args.parquet)]


def _read_rows(inputs):
  """The rows, with every input checked (nothing is written yet)."""
  (flag, first), *_ = inputs
  if flag == "--csv":
    return metadata.read_csv_rows(first)
  return metadata.read_parquet_rows([path for _, path in inputs])


def _raise_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _fail(message: str) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog=PROG,
    description=__doc__.split("\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--csv", help="reference-format CSV")
  source.add_argument("--parquet", help="parquet chunk path or glob")
  parser.add_argument(
    "--base_dir",
    required=True,
    help="directory the media paths are relative to",
  )
  parser.add_argument(
    "--out_dir",
    required=True,
    help="folder of the shards and report; new, empty or "
    "a previous build (replaced whole)",
  )
  parser.add_argument(
    "--format", choices=("array_record", "tfds"), default="array_record"
  )
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--prefix", default="refvie")
  parser.add_argument("--policy", choices=("skip", "fail"), default="skip")
  parser.add_argument(
    "--min_frames",
    type=int,
    default=5,
    help="fewest decodable frames per video (use 1 for image datasets)",
  )
  parser.add_argument("--max_frames", type=int, default=81)
  parser.add_argument("--allow_size_mismatch", action="store_true")
  parser.add_argument("--num_workers", type=int, default=4)
  args = parser.parse_args(argv)

  try:
    _check_args(args)
    inputs = _inputs(args)
    paths.refuse_inputs_as_outputs(
      outputs=[("--out_dir", args.out_dir)],
      inputs=inputs + [("--base_dir", args.base_dir)],
      folders=["--out_dir"],
    )
    if args.format == "array_record":
      build_folder.check_output_folder(args.out_dir)
    rows = _read_rows(inputs)
  except (InputError, FileNotFoundError, ValueError) as e:
    # ValueError covers metadata's column checks, OutputIsInputError and
    # OutputFolderError.
    return _fail(str(e))
  # A polite kill (SIGTERM) stops the build like Ctrl-C: no shard, an
  # "interrupted" report.
  signal.signal(signal.SIGTERM, _raise_interrupt)
  options = record_builder.CheckOptions(
    min_frames=args.min_frames,
    max_frames=args.max_frames,
    require_same_size=not args.allow_size_mismatch,
  )
  try:
    if args.format == "tfds":
      # Imported here: tfds is only needed for this output format.
      from kiwi_jax.data import tfds_builder

      path, reports = tfds_builder.build_tfds(
        {"train": list(rows)},
        args.base_dir,
        args.out_dir,
        options=options,
        policy=args.policy,
      )
      report = reports["train"]
      print(f"prepared {path}")
    else:
      report = record_builder.build_array_records(
        rows,
        args.base_dir,
        args.out_dir,
        options=options,
        policy=args.policy,
        num_shards=args.num_shards,
        prefix=args.prefix,
        num_workers=args.num_workers,
      )
  except record_builder.RecordBuildError as e:
    print(str(e), file=sys.stderr)
    print(json.dumps(e.report.to_dict()["counts"]), file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(
      f"{PROG}: interrupted; no shard written (a previous build in "
      f"{args.out_dir} is unchanged; the report there says how far it "
      "got)",
      file=sys.stderr,
    )
    return 130
  print(report.summary())
  print(json.dumps(report.to_dict()["counts"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
