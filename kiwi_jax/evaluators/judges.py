"""Judging benchmark outputs with a pluggable multimodal judge.

A judge is anything with `upload(paths) -> handles` and
`generate(system_instruction, handles) -> reply text` (`Judge`). The
Gemini HTTP client is in `gemini.py`; `ReplayJudge` answers from recorded
replies without any network (offline mode).

`judge_sample` retries as the reference scorers do (`run_two_videos_gemini`
in `eval_openve_gemini.py`, `run_gemini_eval` in `eval_refvie_gemini.py`):
one upload of the media, whose failure drops the sample; then up to three
`generate` calls, each retried on an exception or an unparsable reply, with
no wait in between; a sample that fails all three is dropped, not scored.
Under OpenVE-Bench's official protocol (`protocols.py`) a task says
otherwise: up to five calls, 60 s apart, repeated only when a call fails,
and the rubric goes in the user turn (`JudgeTask.user_text`).

The results are written as the reference's jsonl
(`openve_<model>_score.jsonl` with `{scores, prompt, edited_type, result}`
records, `refvie_<model>_score.jsonl` with `{scores, result, meta_info,
subtask}`), in benchmark order (the reference writes them in completion
order; the aggregates do not depend on it, except for which of two RefVIE
replies of unequal length is rejected, see `aggregate`). Judging is
resumable: each scored sample is appended to `<jsonl>.partial` as it
finishes, and a rerun only asks the judge about the others. As in the
reference, an existing final jsonl means the benchmark is done.
`judge_pending` fills the partial file and `write_final` writes the jsonl,
so a caller can keep incomplete results out of the final file; every
dropped sample carries its reason (`missing reply` for a replay judge
without a recorded reply, `upload failed: ...`, `no valid scores ...`).
"""

import concurrent.futures
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import tqdm

from kiwi_jax.evaluators import benchmarks, errors, jsonl, protocols, rubrics

ATTEMPTS = 3  # generate calls per sample in both reference scorers
OPENVE_WORKERS = 20  # `batch_process_videos` defaults of the reference
REFVIE_WORKERS = 40
_sleep = time.sleep  # the wait between failed calls (tests replace it)


class Judge(Protocol):
  """A multimodal judge."""

  def upload(self, paths: Sequence[str]) -> Sequence[Any]:
    """Makes media files available to `generate`; returns handles."""

  def generate(
    self,
    system_instruction: str,
    media: Sequence[Any],
    user_text: str | None = None,
  ) -> str:
    """One judge reply for the media under a system instruction.

    `user_text`, when given, is a text part put before the media in the
    user turn (the official OpenVE protocol's rubric); judges that never
    get one need not accept the argument.
    """


@dataclasses.dataclass(frozen=True)
class JudgeTask:
  """One sample to judge.

  Attributes:
    key: the edited video's output name (unique within a benchmark).
    media: paths given to the judge, in the reference's order.
    system_instruction: the filled rubric.
    parse: reply -> scores or None.
    fields: the record fields other than `scores` and `result`, in the
      reference's key order; `result` goes after `scores` when
      `result_first`, else last.
    result_first: key order of the reference's record.
    user_text: text put before the media in the user turn (None: none).
    retry_unparsable: ask again after a reply without scores.
    retry_wait_s: wait after a failed call before the next one.
    protocol: the OpenVE protocol, written last in the record (None: the
      reference's record exactly, without it).
  """

  key: str
  media: tuple[str, ...]
  system_instruction: str
  parse: Callable[[str | None], list[Any] | None]
  fields: Mapping[str, Any]
  result_first: bool
  user_text: str | None = None
  retry_unparsable: bool = True
  retry_wait_s: float = 0.0
  protocol: str | None = None

  def record(self, scores: list[Any], reply: str) -> dict[str, Any]:
    if self.result_first:
      record = {"scores": scores, "result": reply, **self.fields}
    else:
      record = {"scores": scores, **self.fields, "result": reply}
    if self.protocol is not None:
      record["protocol"] = self.protocol
    return record

  def ask(self, judge: Judge, handles: Sequence[Any]) -> str:
    """One judge call for this sample."""
    if self.user_text is None:
      return judge.generate(self.system_instruction, handles)
    return judge.generate(
      self.system_instruction, handles, user_text=self.user_text
    )


def openve_tasks(
  items: Sequence[benchmarks.BenchmarkItem],
  save_dir: str,
  protocol: str | None = None,
) -> list[JudgeTask]:
  """Judge tasks for OpenVE outputs in `save_dir`: [source, edited].

  Args:
    items: the benchmark items.
    save_dir: where the edited videos are.
    protocol: 'kiwi' or 'official' (`protocols.py`), named in every record;
      None is Kiwi's protocol with the reference's record exactly.
  """
  if protocol == protocols.OFFICIAL:
    return _official_tasks(items, save_dir)
  if protocol not in (None, protocols.KIWI):
    protocols.get(protocol)  # raises, naming the protocols
  tasks = []
  for item in items:
    rubric = rubrics.OPENVE_RUBRICS.get(item.edit_type)
    if rubric is None:
      raise ValueError(
        f"OpenVE row {item.index} ({item.source_video}): no rubric for "
        f"edited_type {item.edit_type!r}; known: "
        f"{sorted(rubrics.OPENVE_RUBRICS)}"
      )
    tasks.append(
      JudgeTask(
        key=item.output_name,
        media=(item.source_video, os.path.join(save_dir, item.output_name)),
        system_instruction=rubric.system_instruction(item.instruction),
        parse=rubrics.parse_openve_reply,
        fields={"prompt": item.instruction, "edited_type": item.edit_type},
        result_first=False,
        protocol=protocol,
      )
    )
  return tasks


def _official_tasks(
  items: Sequence[benchmarks.BenchmarkItem], save_dir: str
) -> list[JudgeTask]:
  official = protocols.get(protocols.OFFICIAL)
  tasks = []
  for item in items:
    try:
      user_text = protocols.official_prompt(item.edit_type, item.instruction)
    except ValueError as e:
      raise ValueError(
        f"OpenVE row {item.index} ({item.source_video}): {e}"
      ) from None
    tasks.append(
      JudgeTask(
        key=item.output_name,
        media=(item.source_video, os.path.join(save_dir, item.output_name)),
        system_instruction=protocols.OFFICIAL_SYSTEM_TEXT,
        parse=protocols.parse_official_reply,
        fields={"prompt": item.instruction, "edited_type": item.edit_type},
        result_first=False,
        user_text=user_text,
        retry_unparsable=official.retry_unparsable,
        retry_wait_s=official.retry_wait_s,
        protocol=protocols.OFFICIAL,
      )
    )
  return tasks


def refvie_tasks(
  items: Sequence[benchmarks.BenchmarkItem], save_dir: str
) -> list[JudgeTask]:
  """Judge tasks for RefVIE outputs: [reference image, source, edited].

  The judge always sees the reference image, also for outputs made in
  prompt-only mode (as in the reference), so read the items with
  `prompt_only=False`.
  """
  tasks = []
  for item in items:
    if item.reference_image is None:
      raise ValueError(
        f"RefVIE item {item.index}: no reference image; read "
        "the benchmark with prompt_only=False for judging"
      )
    out_path = os.path.join(save_dir, item.output_name)
    tasks.append(
      JudgeTask(
        key=item.output_name,
        media=(item.reference_image, item.source_video, out_path),
        system_instruction=rubrics.refvie_rubric(
          item.edit_type
        ).system_instruction(item.instruction),
        parse=rubrics.parse_refvie_reply,
        fields={
          "meta_info": {
            "data": dict(item.raw),
            "output": out_path,
            "subtask": item.edit_type,
          },
          "subtask": item.edit_type,
        },
        result_first=True,
      )
    )
  return tasks


class NoReplyError(LookupError):
  """A judge has no reply for a sample (the replay judge's missing reply)."""


def judge_sample(
  judge: Judge, task: JudgeTask, attempts: int = ATTEMPTS
) -> tuple[list[int], str] | None:
  """Scores and reply of one sample, or None when it is dropped."""
  return _judge_sample(judge, task, attempts)[0]


def _judge_sample(
  judge: Judge, task: JudgeTask, attempts: int
) -> tuple[tuple[list[int], str] | None, str]:
  """`judge_sample`'s result and, for a dropped sample, why."""
  try:
    handles = judge.upload(task.media)
  except NoReplyError:
    return None, "missing reply"
  except Exception as e:  # pylint: disable=broad-except
    # The reference drops a sample whose upload fails, whatever the cause.
    logging.warning("%s: upload failed, sample dropped: %s", task.key, e)
    return None, f"upload failed: {e}"
  for attempt in range(1, attempts + 1):
    try:
      reply = task.ask(judge, handles)
    except NoReplyError:
      return None, "missing reply"
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("%s: attempt %d failed: %s", task.key, attempt, e)
      if task.retry_wait_s and attempt < attempts:
        _sleep(task.retry_wait_s)
      continue
    scores = task.parse(reply)
    if scores:
      return (scores, reply), ""
    if not task.retry_unparsable:
      logging.warning("%s: the reply has no score; dropped", task.key)
      return None, "no score in the reply (not asked again)"
    logging.warning(
      "%s: attempt %d: reply has no valid scores", task.key, attempt
    )
  logging.warning("%s: dropped after %d attempts", task.key, attempts)
  return None, f"no valid scores in {attempts} attempts"


@dataclasses.dataclass
class JudgeSummary:
  """What one judging run did.

  Attributes:
    scored: samples scored by this run.
    reused: samples scored by an earlier, interrupted run (`.partial`).
    dropped: samples not scored, in completion order.
    reasons: why each dropped sample was not scored.
    records: the score records of every scored sample, in task order.
    reused_keys: the samples taken from the `.partial` file.
  """

  scored: int = 0
  reused: int = 0
  dropped: list[str] = dataclasses.field(default_factory=list)
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  reused_keys: set[str] = dataclasses.field(default_factory=set)


def partial_path(out_path: str) -> str:
  """Where scored samples are kept until the final jsonl is written."""
  return out_path + ".partial"


def judge_benchmark(
  judge: Judge,
  tasks: Sequence[JudgeTask],
  out_path: str,
  *,
  workers: int,
  attempts: int = ATTEMPTS,
  show_progress: bool = True,
) -> JudgeSummary | None:
  """Judges all tasks and writes the reference's jsonl to `out_path`.

  Args:
    judge: the judge.
    tasks: the samples, in benchmark order.
    out_path: the final jsonl; if it exists nothing is done (None returned).
    workers: concurrent judge calls (threads; the calls wait on the network).
    attempts: generate calls per sample.
    show_progress: show a progress bar.

  Returns:
    The counts, or None when `out_path` already existed.
  """
  if os.path.exists(out_path):
    logging.info("%s exists; not judging again", out_path)
    return None
  summary = judge_pending(
    judge,
    tasks,
    out_path,
    workers=workers,
    attempts=attempts,
    show_progress=show_progress,
  )
  write_final(out_path, summary)
  return summary


def judge_pending(
  judge: Judge,
  tasks: Sequence[JudgeTask],
  out_path: str,
  *,
  workers: int,
  attempts: int = ATTEMPTS,
  show_progress: bool = True,
) -> JudgeSummary:
  """Judges the tasks not yet in `<out_path>.partial`, appending to it.

  The final jsonl is not written (`write_final` does that), so a caller
  can decide whether the results are complete enough to keep.
  """
  keys = [task.key for task in tasks]
  if len(set(keys)) != len(keys):
    raise ValueError("judge tasks have duplicate output names")
  partial_file = partial_path(out_path)
  done = {
    entry["output"]: entry["record"]
    for entry in jsonl.read(partial_file, missing_ok=True)
    if isinstance(entry, dict) and "record" in entry
  }
  summary = JudgeSummary(reused_keys={key for key in keys if key in done})
  summary.reused = len(summary.reused_keys)
  pending = [task for task in tasks if task.key not in done]
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  _end_with_newline(partial_file)
  with (
    open(partial_file, "a", encoding="utf-8") as partial,
    concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
    tqdm.tqdm(
      total=len(pending), desc="judge", unit="sample", disable=not show_progress
    ) as progress,
  ):
    futures = {
      pool.submit(_judge_sample, judge, task, attempts): task
      for task in pending
    }
    try:
      for future in concurrent.futures.as_completed(futures):
        task = futures[future]
        result, reason = future.result()
        progress.update(1)
        if result is None:
          summary.dropped.append(task.key)
          summary.reasons[task.key] = reason
          continue
        record = task.record(*result)
        done[task.key] = record
        partial.write(
          json.dumps(
            {"output": task.key, "result": result[1], "record": record},
            default=str,
          )
          + "\n"
        )
        partial.flush()
        summary.scored += 1
    except BaseException:
      # Interrupted: stop asking the judge; finished samples are kept in
      # the partial file for the next run.
      for future in futures:
        future.cancel()
      raise
  summary.records = [done[k] for k in keys if k in done]
  return summary


def write_final(out_path: str, summary: JudgeSummary) -> None:
  """Writes the final jsonl of a judging run and removes the partial file."""
  jsonl.write_atomic(out_path, summary.records)
  if os.path.exists(partial_path(out_path)):
    os.remove(partial_path(out_path))
  logging.info(
    "%s: %d scored, %d reused, %d dropped",
    out_path,
    summary.scored,
    summary.reused,
    len(summary.dropped),
  )


def _end_with_newline(path: str) -> None:
  """Terminates a line cut short by a killed run, so appends stay valid."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) != b"\n":
      f.write(b"\n")


class ReplayJudge:
  """Offline judge: answers from recorded replies, never the network.

  Replies are keyed by the edited video's output name (the last media path,
  relative to `save_dir`). A key may map to one reply (given at every
  attempt) or a list of replies (one per attempt, the last repeated); in a
  reply file, the lines of one output are its attempts, in file order.
  An output without a reply is dropped as `missing reply`
  (`NoReplyError`). After judging, `skipped_replies` names every recorded
  reply that did not give a score, and why.
  """

  def __init__(self, replies: Mapping[str, str | Sequence[str]], save_dir: str):
    self._replies = {
      k: [
        (f"reply {i + 1} for {k}", text)
        for i, text in enumerate([v] if isinstance(v, str) else v)
      ]
      for k, v in replies.items()
    }
    self._order = {}  # (key, attempt index) -> position in the file
    self._invalid: list[tuple[int, str]] = []
    self._save_dir = save_dir
    self._tried: dict[str, list[int]] = {}
    self._lock = threading.Lock()

  @classmethod
  def from_jsonl(
    cls, path: str, save_dir: str, protocol: str | None = None
  ) -> "ReplayJudge":
    """Reads `{"output": name, "result": reply}` lines (a `.partial` file
    of `judge_benchmark` has this form).

    Args:
      path: the reply file.
      save_dir: the folder the output names are relative to.
      protocol: the OpenVE protocol being judged; a line whose `record`
        names another one (replies to the other protocol's prompts) is an
        error. Lines without a record are taken as they are.

    Raises:
      errors.InputError: the file is missing, not UTF-8, or a JSON line
        lacks the two keys, holds a non-string value or was made under
        another protocol.
    """
    values, invalid = jsonl.read_lines(path)
    judge = cls({}, save_dir)
    for line_number, entry in values:
      where = f"{path}:{line_number}"
      if not isinstance(entry, dict) or not {"output", "result"} <= set(entry):
        raise errors.InputError(
          f'{where}: replay lines need "output" and "result" keys, got '
          f"{entry!r:.200}"
        )
      if not isinstance(entry["output"], str) or not isinstance(
        entry["result"], str
      ):
        raise errors.InputError(
          f'{where}: "output" and "result" must be strings, got {entry!r:.200}'
        )
      record = entry.get("record")
      made_under = (
        record.get("protocol", protocols.KIWI)
        if isinstance(record, dict)
        else None
      )
      if protocol is not None and made_under not in (None, protocol):
        raise errors.InputError(
          f"{where}: this reply was recorded under the {made_under} "
          f"protocol, so it cannot replay a {protocol} one (the prompts "
          "differ)"
        )
      replies = judge._replies.setdefault(entry["output"], [])
      judge._order[entry["output"], len(replies)] = line_number
      replies.append((where, entry["result"]))
    judge._invalid = [(n, f"{path}:{n}: {message}") for n, message in invalid]
    return judge

  def _key(self, path: str) -> str:
    return os.path.relpath(path, self._save_dir)

  def upload(self, paths: Sequence[str]) -> Sequence[Any]:
    if self._key(paths[-1]) not in self._replies:
      raise NoReplyError(f"no recorded reply for {self._key(paths[-1])}")
    return tuple(paths)

  def generate(
    self,
    system_instruction: str,
    media: Sequence[Any],
    user_text: str | None = None,
  ) -> str:
    del system_instruction, user_text  # The recorded reply answers them.
    key = self._key(media[-1])
    replies = self._replies.get(key)
    if not replies:
      raise NoReplyError(f"no recorded reply for {key}")
    with self._lock:
      tried = self._tried.setdefault(key, [])
      index = min(len(tried), len(replies) - 1)
      tried.append(index)
    return replies[index][1]

  def skipped_replies(
    self, benchmark_keys: Iterable[str], summary: JudgeSummary
  ) -> list[str]:
    """One line per recorded reply that gave no score, in file order.

    Args:
      benchmark_keys: the output names of the benchmark.
      summary: the judging run (`judge_pending`).
    """
    benchmark_keys = set(benchmark_keys)
    scored = {
      key
      for key in benchmark_keys
      if key not in summary.reasons and key in self._tried
    }
    lines = list(self._invalid)
    for key, replies in self._replies.items():
      tried = self._tried.get(key, [])
      used = tried[-1] if key in scored else None
      for index, (where, _) in enumerate(replies):
        if index == used:
          continue
        if key not in benchmark_keys:
          why = "no such output in the benchmark"
        elif key in summary.reused_keys:
          why = "not used: already scored by an earlier run (.partial)"
        elif index in tried:
          why = "unparsable: the reply has no valid scores"
        elif used is not None:
          why = f"duplicate: the output was scored from {replies[used][0]}"
        elif tried:
          why = f"not tried: the output was dropped after {len(tried)} tries"
        else:
          why = f"not used: {summary.reasons.get(key, 'not judged')}"
        lines.append(
          (self._order.get((key, index), 0), f"{where} ({key}): {why}")
        )
    return [line for _, line in sorted(lines, key=lambda x: x[0])]
