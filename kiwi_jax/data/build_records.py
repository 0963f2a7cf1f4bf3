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

Prints the problem report; exit status 1 when the "fail" policy fired.
"""

import argparse
import json
import sys

from etils import epath

from kiwi_jax.data import metadata
from kiwi_jax.data import record_builder


def _expand(pattern: str) -> list[epath.Path]:
  path = epath.Path(pattern)
  if any(c in path.name for c in "*?["):
    matches = sorted(path.parent.glob(path.name))
    if not matches:
      raise FileNotFoundError(f"no file matches {pattern}")
    return matches
  return [path]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--csv", help="reference-format CSV")
  source.add_argument("--parquet", help="parquet chunk path or glob")
  parser.add_argument("--base_dir", required=True,
                      help="directory the media paths are relative to")
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--format", choices=("array_record", "tfds"),
                      default="array_record")
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--prefix", default="refvie")
  parser.add_argument("--policy", choices=("skip", "fail"), default="skip")
  parser.add_argument("--min_frames", type=int, default=5,
                      help="fewest decodable frames per video (use 1 for "
                      "image datasets)")
  parser.add_argument("--max_frames", type=int, default=81)
  parser.add_argument("--allow_size_mismatch", action="store_true")
  parser.add_argument("--num_workers", type=int, default=4)
  args = parser.parse_args(argv)

  if args.csv:
    rows = metadata.read_csv_rows(args.csv)
  else:
    rows = metadata.read_parquet_rows(_expand(args.parquet))
  options = record_builder.CheckOptions(
      min_frames=args.min_frames, max_frames=args.max_frames,
      require_same_size=not args.allow_size_mismatch)
  try:
    if args.format == "tfds":
      # Imported here: tfds is only needed for this output format.
      from kiwi_jax.data import tfds_builder
      path, reports = tfds_builder.build_tfds(
          {"train": list(rows)}, args.base_dir, args.out_dir,
          options=options, policy=args.policy)
      report = reports["train"]
      print(f"prepared {path}")
    else:
      report = record_builder.build_array_records(
          rows, args.base_dir, args.out_dir, options=options,
          policy=args.policy, num_shards=args.num_shards,
          prefix=args.prefix, num_workers=args.num_workers)
  except record_builder.RecordBuildError as e:
    print(str(e), file=sys.stderr)
    print(json.dumps(e.report.to_dict()["counts"]), file=sys.stderr)
    return 1
  print(report.summary())
  print(json.dumps(report.to_dict()["counts"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
