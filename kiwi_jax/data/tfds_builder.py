"""A `tfds` dataset builder for RefVIE-format data (ArrayRecord, no TensorFlow).

The builder runs the same row checks as `record_builder` and stores the same
fields. Media stay encoded (`Tensor(shape=(), dtype=object)` bytes): tfds's
`Image`/`Video` features need TensorFlow to encode, and decoded frames would
be ~100x larger. The prepared directory is readable without this code:

  builder = tfds.builder_from_directory(path)
  source = builder.as_data_source("train")   # random access, numpy dicts

and `pipeline.make_source` accepts such a directory directly.

A build replaces the dataset it prepared before (`<data_dir>/ref_vie_builder/
<version>`) instead of silently reusing it: a local one is prepared in a
staging folder and renamed into place, so a failed or interrupted build
leaves the previous one whole; a remote one (gs://) is deleted first and
prepared again (tfds's own overwrite).
"""

import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from kiwi_jax.data import build_folder, record_builder
from kiwi_jax.data.metadata import Row
from kiwi_jax.utils import atomic

_BYTES = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)


def features() -> tfds.features.FeaturesDict:
  """The feature spec; field meanings are those of `check_row`."""
  return tfds.features.FeaturesDict(
    {
      "key": tfds.features.Text(),
      "origin": tfds.features.Text(),
      "prompt": tfds.features.Text(),
      "src": _BYTES(),
      "src_kind": tfds.features.Text(),
      "tgt": _BYTES(),
      "tgt_kind": tfds.features.Text(),
      "ref_image": _BYTES(),
      "has_ref": tfds.features.Scalar(dtype=np.bool_),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
    }
  )


class RefVIEBuilder(tfds.core.GeneratorBasedBuilder):
  """RefVIE-format edit samples (instruction or reference video editing)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded media bytes plus metadata."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds locates a builder's package from its module; spell it out so the
    # lookup does not depend on how kiwi_jax is installed (namespace package,
    # zipapp, editable install).
    return epath.Path(__file__)

  def __init__(
    self,
    *,
    rows_by_split: Mapping[str, Sequence[Row]],
    base_dir: str | epath.Path,
    options: record_builder.CheckOptions = record_builder.CheckOptions(),
    policy: record_builder.Policy = "skip",
    **kwargs,
  ):
    self._rows_by_split = dict(rows_by_split)
    self._base_dir = epath.Path(base_dir)
    self._options = options
    self._policy = policy
    self.reports: dict[str, record_builder.ProblemReport] = {}
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__.split("\n")[0],
      features=features(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Media are local or on an epath filesystem.
    return {
      split: self._generate_examples(split, rows)
      for split, rows in self._rows_by_split.items()
    }

  def _generate_examples(self, split, rows):
    report = self.reports.setdefault(split, record_builder.ProblemReport())
    for fields in record_builder.checked_records(
      rows,
      self._base_dir,
      report,
      options=self._options,
      policy=self._policy,
    ):
      yield fields["key"], fields


def dataset_dir(data_dir: str | epath.Path) -> epath.Path:
  """The folder `build_tfds` prepares (and replaces) under `data_dir`."""
  return epath.Path(data_dir) / RefVIEBuilder.name / str(RefVIEBuilder.VERSION)


def build_tfds(
  rows_by_split: Mapping[str, Sequence[Row]],
  base_dir: str | epath.Path,
  data_dir: str | epath.Path,
  *,
  options: record_builder.CheckOptions = record_builder.CheckOptions(),
  policy: record_builder.Policy = "skip",
) -> tuple[epath.Path, dict[str, record_builder.ProblemReport]]:
  """Prepares the dataset under `data_dir`, replacing an earlier one.

  Returns:
    The prepared directory (for `tfds.builder_from_directory`) and the
    problem report of each split.
  """
  make = lambda root, **kw: RefVIEBuilder(
    rows_by_split=rows_by_split,
    base_dir=base_dir,
    options=options,
    policy=policy,
    data_dir=str(root),
    **kw,
  )
  final = dataset_dir(data_dir)
  if "://" in str(data_dir):
    builder = make(data_dir)
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD
      )
    )
    return epath.Path(builder.data_dir), builder.reports
  root = pathlib.Path(data_dir)
  root.mkdir(parents=True, exist_ok=True)
  # What a killed build left: its scratch data_dir and staging folder.
  for left in root.glob(f".{RefVIEBuilder.name}.tmp-*"):
    shutil.rmtree(left, ignore_errors=True)
  build_folder.remove_leftovers(final)
  scratch = tempfile.mkdtemp(dir=root, prefix=f".{RefVIEBuilder.name}.tmp-")
  try:
    builder = make(scratch)
    builder.download_and_prepare()
    with atomic.atomic_directory(final, overwrite=True) as tmp:
      for entry in os.listdir(builder.data_dir):
        os.replace(os.path.join(builder.data_dir, entry), tmp / entry)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return final, builder.reports
