"""The output folder of a record build: one build per folder, replaced whole.

A build owns its output folder. The folder may be absent, empty, or hold a
previous build (ArrayRecord shards, their `.tmp` leftovers and reports);
anything else in it is refused (`OutputFolderError`), so no file the user
put there is ever deleted. A build writes into a fresh staging folder and,
once every shard is complete, replaces the previous build whole: readers see
either the old build or the new one, never a mixture, and shards of an older
build (another shard count or prefix) never survive next to new ones.

A build that does not finish (the "fail" policy fired, an interrupt, an
error) leaves the previous build untouched and writes only its report: as
`<prefix>.report.json` when the folder holds no shards, else beside the
previous build as `<prefix>.unfinished.report.json` (removed by the next
complete build).

Local folders are replaced with an atomic rename. Remote folders (gs://)
have no atomic rename: new shards are staged under `.tmp` names, then the
old build's files are deleted and the new ones renamed into place.
"""

import contextlib
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

from kiwi_jax.utils import atomic

SHARD_SUFFIX = ".array_record"
REPORT_SUFFIX = ".report.json"
UNFINISHED_REPORT_SUFFIX = ".unfinished" + REPORT_SUFFIX
# Names a build writes: shards, shards being written, reports, and files
# staged for a remote folder.
_BUILD_SUFFIXES = tuple(
  name + end
  for name in (SHARD_SUFFIX, REPORT_SUFFIX)
  for end in ("", ".tmp", ".staged")
)


class OutputFolderError(ValueError):
  """The output folder holds something that is not a record build."""


def _is_remote(path: epath.Path) -> bool:
  return "://" in str(path)


def resolve(out_dir: str | epath.Path) -> epath.Path:
  """The folder a build replaces (symlinks followed for local paths)."""
  path = epath.Path(out_dir)
  return path if _is_remote(path) else epath.Path(pathlib.Path(path).resolve())


def is_build_file(path: epath.Path) -> bool:
  return not path.is_dir() and path.name.endswith(_BUILD_SUFFIXES)


def check_output_folder(
  out_dir: str | epath.Path, flag: str = "--out_dir"
) -> None:
  """Raises unless `out_dir` is absent, empty or holds only a build.

  Raises:
    OutputFolderError: `out_dir` is a file, or holds other files or
      folders (the first few are named).
  """
  path = epath.Path(out_dir)
  if not path.exists():
    return
  if not path.is_dir():
    raise OutputFolderError(
      f"{flag} {path} is a file; a record build writes a folder. Choose "
      "a new folder."
    )
  foreign = sorted(p.name for p in path.iterdir() if not is_build_file(p))
  if foreign:
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    raise OutputFolderError(
      f"{flag} {path} holds files that no record build wrote ({shown}); "
      "a build replaces its output folder whole, so choose a new or "
      "empty folder."
    )


def has_shards(out_dir: epath.Path) -> bool:
  return out_dir.is_dir() and any(out_dir.glob(f"*{SHARD_SUFFIX}"))


def remove_leftovers(out_dir: epath.Path) -> None:
  """Deletes staging folders that an earlier, killed build left beside
  `out_dir` (two builds into one folder at once are not supported).

  A build killed between moving the previous build aside and renaming the
  new one in leaves the previous build only in `.<name>.old-*/x`: it is
  moved back first.
  """
  if _is_remote(out_dir) or not out_dir.parent.is_dir():
    return
  target = pathlib.Path(out_dir)
  for old in sorted(target.parent.glob(f".{target.name}.old-*")):
    if not target.exists() and (old / "x").exists():
      (old / "x").replace(target)
  for kind in ("tmp", "old"):
    for left in target.parent.glob(f".{target.name}.{kind}-*"):
      shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def staging(out_dir: epath.Path) -> Iterator[epath.Path]:
  """Yields an empty local folder that replaces `out_dir` if the block
  succeeds; on an exception nothing in `out_dir` changes."""
  if not _is_remote(out_dir):
    with atomic.atomic_directory(out_dir, overwrite=True) as tmp:
      yield epath.Path(tmp)
    return
  with tempfile.TemporaryDirectory() as scratch:
    yield epath.Path(scratch)
    _publish_remote(epath.Path(scratch), out_dir)


def _publish_remote(scratch: epath.Path, out_dir: epath.Path) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  staged = []
  for path in sorted(scratch.iterdir()):
    target = out_dir / (path.name + ".staged")
    path.copy(target, overwrite=True)
    staged.append((target, out_dir / path.name))
  keep = {p.name for pair in staged for p in pair}
  for old in out_dir.iterdir():
    if is_build_file(old) and old.name not in keep:
      old.unlink()
  for target, final in staged:
    target.replace(final)


def write_unfinished_report(
  out_dir: epath.Path, prefix: str, text: str
) -> epath.Path:
  """Writes the report of a build that did not finish (module docstring)."""
  suffix = UNFINISHED_REPORT_SUFFIX if has_shards(out_dir) else REPORT_SUFFIX
  path = out_dir / f"{prefix}{suffix}"
  atomic.write_text(path, text)  # local or remote
  return path
