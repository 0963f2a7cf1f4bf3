"""Provenance records, and the output directory both drivers write.

Layout of an output directory:
  refvie.csv            iid,src_video,tgt_video,ref_image,prompt: the
                        accepted quadruplets (the reference's ref-video CSV,
                        reference §6.1), sorted by iid, paths relative to the
                        directory (or absolute with media="reference")
  media/ref/<iid>.png   the synthesised reference scaffolds
  media/{src,tgt}/...   copies of the accepted pairs' media (media="copy")
  provenance.jsonl      one `Outcome` per input pair, sorted by key: status,
                        rejecting stage and reason, stage scores, per-frame
                        boxes, best frame, hashes
  report.json           counts: input, accepted, rejected per stage and
                        reason; `input == accepted + rejected` always holds
The result is loadable as-is by `kiwi_jax.data` (metadata.read_csv_rows with
base_dir = the output directory, then record_builder for ArrayRecord).
"""

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Iterable
from typing import Any

from etils import epath

from kiwi_jax.refvie.types import REASONS, STEPS
from kiwi_jax.utils import atomic

CSV_COLUMNS = ("iid", "src_video", "tgt_video", "ref_image", "prompt")


@dataclasses.dataclass
class Outcome:
  """What happened to one input pair (its provenance).

  Attributes:
    key, origin, prompt: from the input row.
    src_video, tgt_video: the media paths the output CSV lists.
    status: "accepted" or "rejected".
    stage, reason, detail: the rejecting stage, its reason (types.REASONS)
      and explanation; None / "" for accepted pairs.
    edit_kind: "subject" or "background" once grounded.
    scores: "<stage>.<name>" -> value, for every stage that ran.
    boxes: per frame (y0, x0, y1, x1) of the edited region, or None.
    best_frame: the target frame the scaffold was taken from.
    ref_image: the scaffold's path relative to the output directory.
    signature: perceptual hashes for de-duplication.
    priority: rank for de-duplication (higher is kept).
    duplicate_of: the key that made this pair a duplicate.
  """

  key: str
  origin: str
  prompt: str
  src_video: str = ""
  tgt_video: str = ""
  status: str = "rejected"
  stage: str | None = None
  reason: str | None = None
  detail: str = ""
  edit_kind: str | None = None
  scores: dict[str, float] = dataclasses.field(default_factory=dict)
  boxes: list[list[int] | None] = dataclasses.field(default_factory=list)
  best_frame: int | None = None
  ref_image: str | None = None
  signature: list[str] | None = None
  priority: float = 0.0
  duplicate_of: str | None = None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, line: str) -> "Outcome":
    return cls(**json.loads(line))


def safe_name(key: str) -> str:
  """A file-name-safe form of a key (a short hash is added if it changed)."""
  clean = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
  if clean != key:
    clean += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
  return clean


def mark_duplicates(
  outcomes: Iterable[Outcome], duplicates: dict[str, str]
) -> list[Outcome]:
  """Marks accepted outcomes listed in `duplicates` as dedup rejections."""
  out = []
  for o in outcomes:
    if o.status == "accepted" and o.key in duplicates:
      o = dataclasses.replace(
        o,
        status="rejected",
        stage="dedup",
        reason="duplicate",
        duplicate_of=duplicates[o.key],
        detail=f"near-duplicate of {duplicates[o.key]}",
      )
    out.append(o)
  return out


def report(outcomes: Iterable[Outcome]) -> dict[str, Any]:
  """Counts per stage and reason; raises if they fail to add up."""
  rejected = {stage: {r: 0 for r in REASONS[stage]} for stage in STEPS}
  total = accepted = 0
  for o in outcomes:
    total += 1
    if o.status == "accepted":
      accepted += 1
    elif o.stage in rejected and o.reason in rejected[o.stage]:
      rejected[o.stage][o.reason] += 1
    else:
      raise ValueError(f"{o.key}: unknown rejection {o.stage}/{o.reason}")
  rejected_total = sum(sum(r.values()) for r in rejected.values())
  if total != accepted + rejected_total:
    raise AssertionError(
      f"counts do not add up: {total} != {accepted} + {rejected_total}"
    )
  return {
    "input": total,
    "accepted": accepted,
    "rejected": rejected_total,
    "rejected_by_stage": {s: sum(r.values()) for s, r in rejected.items()},
    "rejected_by_reason": rejected,
  }


def finalize(
  out_dir: str | epath.Path, outcomes: Iterable[Outcome]
) -> dict[str, Any]:
  """Writes refvie.csv, provenance.jsonl and report.json (de-duplicated
  outcomes in), and deletes the media written for pairs dropped as
  duplicates. Returns the report."""
  out_dir = epath.Path(out_dir)
  outcomes = sorted(outcomes, key=lambda o: o.key)
  keys = [o.key for o in outcomes]
  if len(set(keys)) != len(keys):
    dup = next(k for i, k in enumerate(keys[1:]) if k == keys[i])
    raise ValueError(f"key {dup!r} appears in more than one input row")
  summary = report(outcomes)
  for o in outcomes:
    if o.stage == "dedup":
      for path in (o.ref_image, o.src_video, o.tgt_video):
        if path and path.startswith("media/"):
          (out_dir / path).unlink(missing_ok=True)
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(CSV_COLUMNS)
  for o in outcomes:
    if o.status == "accepted":
      writer.writerow([o.key, o.src_video, o.tgt_video, o.ref_image, o.prompt])
  atomic.write_bytes(out_dir / "refvie.csv", text.getvalue().encode())
  atomic.write_bytes(
    out_dir / "provenance.jsonl",
    "".join(o.to_json() + "\n" for o in outcomes).encode(),
  )
  atomic.write_bytes(
    out_dir / "report.json", (json.dumps(summary, indent=2) + "\n").encode()
  )
  return summary
