"""Metric writers with clu's method names, without TensorFlow.

``create_default_writer(workdir)`` returns a writer that always appends JSON
lines to ``workdir/metrics.jsonl``, adds TensorBoard event files through
tensorboardX when it is installed (extra ``tb``), and wandb when a project is
given (extra ``wandb``). Only process 0 writes; other processes get a writer
that drops everything, so call sites need no ``if process_index() == 0``.

Images and videos go to TensorBoard/wandb; the JSONL backend records their
shapes and, for videos, writes mp4 files next to it (``workdir/videos``) so
edits can be watched without TensorBoard.

A restart from the checkpoint at step N redoes steps N+1.. that the killed
run may already have logged; ``discard_after(N)`` keeps readers at one
value per step: JSONL drops its rows past N (the file is rewritten
atomically), TensorBoard gets a purge marker (a ``SessionLog.START`` event
at step N+1, which makes TensorBoard hide the older events from step N+1
on), wandb keeps what it has (it ignores steps lower than a run's current
one).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from kiwi_jax.utils import atomic

Scalar = int | float | np.number | np.ndarray


class MetricWriter(Protocol):
  """The clu ``MetricWriter`` interface kiwi_jax code writes against."""

  def write_scalars(self, step: int, scalars: Mapping[str, Scalar]) -> None: ...

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: uint8 or float in [0, 1], [H, W, C] or [N, H, W, C]."""

  def write_videos(
    self, step: int, videos: Mapping[str, np.ndarray], fps: float = 15.0
  ) -> None:
    """videos: uint8 [T, H, W, C] (or float in [0, 1])."""

  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

  def discard_after(self, step: int) -> None:
    """Supersedes what was written for steps after ``step`` (a restart
    from the checkpoint at ``step`` writes them again)."""

  def flush(self) -> None: ...

  def close(self) -> None: ...


def _to_uint8(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  return (np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(
    np.uint8
  )


def _as_float(v: Scalar) -> float:
  v = float(np.asarray(v))
  return v


class NullWriter:
  """Drops everything (non-zero processes)."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos, fps=15.0):
    del step, videos, fps

  def write_hparams(self, hparams):
    del hparams

  def discard_after(self, step):
    del step

  def flush(self):
    pass

  def close(self):
    pass


class JsonlWriter:
  """One JSON object per call in ``<workdir>/metrics.jsonl``.

  The workdir may be local or any filesystem ``etils.epath`` reaches
  (``gs://`` on TPU VMs). Object stores cannot append, so there each flush
  rewrites the file from the lines kept in memory.
  """

  def __init__(
    self, workdir: str | os.PathLike, filename: str = "metrics.jsonl"
  ):
    from etils import epath

    self.workdir = epath.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / filename
    self._local = isinstance(self.workdir, pathlib.Path) or (
      "://" not in str(self.workdir)
    )
    if self._local:
      self._drop_torn_last_line()
      self._file = self._open_for_append()
    else:
      self._lines = (
        self.path.read_text().splitlines(keepends=True)
        if self.path.exists()
        else []
      )
      if self._lines and not self._lines[-1].endswith("\n"):
        self._lines.pop()  # torn by a killed run
      self._file = None

  def _open_for_append(self):
    return open(str(self.path), "a", encoding="utf-8")

  def _drop_torn_last_line(self) -> None:
    """A run killed in the middle of a line leaves it without its newline;
    appending to it would spoil the next row too."""
    path = str(self.path)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
      return
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) == b"\n":
        return
      f.seek(0)
      data = f.read()
    atomic.write_bytes(path, data[: data.rfind(b"\n") + 1])

  def discard_after(self, step: int) -> None:
    """Drops the rows of steps after ``step``; rows without a step
    (hparams) stay. The file is rewritten atomically, and only when
    something is dropped."""
    if self._file is not None:
      self._file.close()
      lines = (
        self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        if self.path.exists()
        else []
      )
    else:
      lines = self._lines
    kept = _lines_up_to(lines, step)
    if len(kept) != len(lines):
      if self._file is not None:
        atomic.write_text(str(self.path), "".join(kept))
      else:
        self._lines = kept
        atomic.write_text(self.path, "".join(kept))
    if self._file is not None:
      self._file = self._open_for_append()

  def _write(self, record: dict[str, Any]) -> None:
    record.setdefault("time", time.time())
    line = json.dumps(record, sort_keys=True) + "\n"
    if self._file is not None:
      self._file.write(line)
    else:
      self._lines.append(line)

  def write_scalars(self, step, scalars):
    values = {}
    for k, v in scalars.items():
      f = _as_float(v)
      values[k] = f if math.isfinite(f) else str(f)  # JSON has no NaN
    self._write({"step": int(step), **values})

  def write_images(self, step, images):
    self._write(
      {
        "step": int(step),
        "images": {k: list(np.shape(v)) for k, v in images.items()},
      }
    )

  def write_videos(self, step, videos, fps=15.0):
    from kiwi_jax.media.video_io import write_mp4

    paths = {}
    for name, video in videos.items():
      rel = f"videos/{name.replace('/', '_')}_{step}.mp4"
      if self._local:
        write_mp4(
          pathlib.Path(str(self.workdir)) / rel, _to_uint8(video), fps=fps
        )
      else:  # encode locally, then copy to the remote workdir
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
          local = write_mp4(
            pathlib.Path(tmp) / "v.mp4", _to_uint8(video), fps=fps
          )
          atomic.write_bytes(self.workdir / rel, local.read_bytes())
      paths[name] = rel
    self._write({"step": int(step), "videos": paths})

  def write_hparams(self, hparams):
    self._write({"hparams": _jsonable(hparams)})

  def flush(self):
    if self._file is not None:
      self._file.flush()
    else:
      atomic.write_text(self.path, "".join(self._lines))

  def close(self):
    if self._file is not None:
      if not self._file.closed:
        self._file.close()
    else:
      self.flush()


def _lines_up_to(lines: list[str], step: int) -> list[str]:
  """The JSONL lines of steps <= ``step`` or of no step, in order (lines
  that do not parse are kept as they are)."""
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      kept.append(line)
      continue
    row_step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(row_step, int) or row_step <= step:
      kept.append(line)
  return kept


def _jsonable(obj):
  return json.loads(json.dumps(obj, default=str))


class TensorBoardWriter:
  """TensorBoard event files via tensorboardX (no TensorFlow)."""

  def __init__(self, logdir: str | os.PathLike):
    from tensorboardX import SummaryWriter

    self._logdir = str(logdir)
    self._w = SummaryWriter(self._logdir)

  def discard_after(self, step):
    """Starts a new event file whose first events mark a restart at step
    ``step + 1``: TensorBoard then hides the earlier files' events from
    that step on (tensorboardX's ``purge_step``)."""
    from tensorboardX import SummaryWriter

    self._w.close()
    self._w = SummaryWriter(self._logdir, purge_step=int(step) + 1)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._w.add_scalar(k, _as_float(v), int(step))

  def write_images(self, step, images):
    for k, v in images.items():
      v = _to_uint8(v)
      self._w.add_images(
        k, v if v.ndim == 4 else v[None], int(step), dataformats="NHWC"
      )

  def write_videos(self, step, videos, fps=15.0):
    for k, v in videos.items():
      v = _to_uint8(v)  # [T, H, W, C] -> [1, T, C, H, W]
      self._w.add_video(
        k, np.transpose(v, (0, 3, 1, 2))[None], int(step), fps=fps
      )

  def write_hparams(self, hparams):
    flat = {
      k: v if isinstance(v, (int, float, str, bool)) else str(v)
      for k, v in _flatten(hparams).items()
    }
    self._w.add_text("hparams", json.dumps(flat, indent=1), 0)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


class WandbWriter:
  """Weights & Biases (opt-in; needs the ``wandb`` extra and a login)."""

  def __init__(
    self, project: str, workdir: str | os.PathLike, name: str | None = None
  ):
    import wandb

    self._wandb = wandb
    self._run = wandb.init(
      project=project, dir=str(workdir), name=name, resume="allow"
    )

  def write_scalars(self, step, scalars):
    self._run.log({k: _as_float(v) for k, v in scalars.items()}, step=int(step))

  def write_images(self, step, images):
    self._run.log(
      {k: self._wandb.Image(_to_uint8(v)) for k, v in images.items()},
      step=int(step),
    )

  def write_videos(self, step, videos, fps=15.0):
    self._run.log(
      {
        k: self._wandb.Video(
          np.transpose(_to_uint8(v), (0, 3, 1, 2)), fps=int(fps)
        )
        for k, v in videos.items()
      },
      step=int(step),
    )

  def write_hparams(self, hparams):
    self._run.config.update(_flatten(hparams), allow_val_change=True)

  def discard_after(self, step):
    """Nothing to do: wandb ignores (with a warning) rows for steps below
    a resumed run's current step, so it keeps the first value of each."""
    del step

  def flush(self):
    pass

  def close(self):
    self._run.finish()


class MultiWriter:
  """Fans every call out to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images):
    for w in self.writers:
      w.write_images(step, images)

  def write_videos(self, step, videos, fps=15.0):
    for w in self.writers:
      w.write_videos(step, videos, fps)

  def write_hparams(self, hparams):
    for w in self.writers:
      w.write_hparams(hparams)

  def discard_after(self, step):
    for w in self.writers:
      w.discard_after(step)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def create_default_writer(
  workdir: str | os.PathLike,
  *,
  tensorboard: bool = True,
  wandb_project: str | None = None,
  wandb_name: str | None = None,
  just_logging: bool | None = None,
) -> MetricWriter:
  """JSONL always, TensorBoard if tensorboardX is installed, wandb if asked.

  Args:
    workdir: run directory.
    tensorboard: add TensorBoard events under ``workdir/tensorboard``.
    wandb_project: wandb project name; ``None`` disables wandb.
    wandb_name: wandb run name.
    just_logging: return a writer that writes nothing (default: on every
      process but process 0).
  """
  if just_logging is None:
    import jax

    just_logging = jax.process_index() > 0
  if just_logging:
    return NullWriter()
  writers: list[MetricWriter] = [JsonlWriter(workdir)]
  if tensorboard:
    try:
      writers.append(TensorBoardWriter(pathlib.Path(workdir) / "tensorboard"))
    except ImportError:
      pass  # the `tb` extra is optional; JSONL still records everything
  if wandb_project:
    writers.append(WandbWriter(wandb_project, workdir, wandb_name))
  return MultiWriter(writers)
