"""The suite's verdicts and its two outputs: JSON and a markdown table."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from kiwi_jax.utils import atomic

JSON_NAME = "gpu_results.json"
MARKDOWN_NAME = "gpu_results.md"


def _get(results, section, *keys):
  value = results["sections"].get(section, {})
  for key in keys:
    if not isinstance(value, dict):
      return None
    value = value.get(key)
  return value


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
  """The issue's targets, each with its measured value and verdict
  (PASS, FAIL, or N/A where the value is missing)."""
  steps = _get(results, "edit", "steps")
  mfu = _get(results, "train", "mfu")
  rows = [
    (
      "train_mfu",
      "DiT train step MFU (fwd+bwd, remat)",
      ">= 50 %",
      None if mfu is None else 100 * mfu,
      "%",
      lambda v: v >= 50.0,
    ),
    (
      "infer_speedup",
      "DiT inference step vs diffusers (time ratio)",
      ">= 1.5x",
      _get(results, "infer", "speedup"),
      "x",
      lambda v: v >= 1.5,
    ),
    (
      "edit_denoise",
      f"{steps or 50} DiT steps of an edit (H200)",
      "<= 30 s",
      _get(results, "edit", "denoise_s"),
      "s",
      lambda v: v <= 30.0,
    ),
    (
      "vae_decode_time",
      "VAE decode time (tiled, as the pipeline)",
      "<= 4 s",
      _get(results, "vae", "decode_s"),
      "s",
      lambda v: v <= 4.0,
    ),
    (
      "vae_decode_memory",
      "VAE decode peak memory",
      "<= 40 GB",
      _get(results, "vae", "peak_gb"),
      "GB",
      lambda v: v <= 40.0,
    ),
  ]
  out = []
  for key, name, goal, value, unit, ok in rows:
    verdict = "N/A" if value is None else ("PASS" if ok(value) else "FAIL")
    out.append(
      {
        "key": key,
        "target": name,
        "goal": goal,
        "value": value,
        "unit": unit,
        "verdict": verdict,
      }
    )
  return out


def _num(value, digits=2, unit=""):
  if value is None:
    return "-"
  return f"{value:.{digits}f}{unit}"


def _train_rows(section):
  lines = [
    "| remat policy | compile s | step s | model TFLOP | TFLOP/s | "
    "MFU | peak GB | error |",
    "|" + " --- |" * 8,
  ]
  for policy, e in section.get("policies", {}).items():
    mfu = e.get("mfu")
    lines.append(
      f"| {policy} | {_num(e.get('compile_s'), 1)} | "
      f"{_num(e.get('median_s'), 3)} | {_num(e.get('model_tflop'), 1)} | "
      f"{_num(e.get('tflops'), 1)} | "
      f"{_num(None if mfu is None else 100 * mfu, 1, ' %')} | "
      f"{_num(e.get('peak_gb'), 1)} | {e.get('error', '')} |"
    )
  return lines


def _infer_rows(section):
  lines = [
    "| implementation | compile/first s | step s | TFLOP/s | error |",
    "|" + " --- |" * 5,
  ]
  jax_e = section.get("kiwi_jax", {})
  tflop = section.get("model_tflop")
  rate = lambda e: (
    tflop / e["median_s"]  # noqa: E731
    if tflop and e.get("median_s")
    else None
  )
  lines.append(
    f"| kiwi_jax (attention {section.get('attention')}) | "
    f"{_num(jax_e.get('compile_s'), 1)} | "
    f"{_num(jax_e.get('median_s'), 3)} | "
    f"{_num(rate(jax_e), 1)} | {jax_e.get('error', '')} |"
  )
  diff = section.get("diffusers", {})
  for backend, e in diff.get("backends", {}).items():
    lines.append(
      f"| diffusers {diff.get('diffusers', '')} `{backend}` | "
      f"{_num(e.get('first_call_s'), 1)} | "
      f"{_num(e.get('median_s'), 3)} | {_num(rate(e), 1)} | "
      f"{e.get('error', '')} |"
    )
  if diff.get("error"):
    lines.append(f"| diffusers | - | - | - | {diff['error']} |")
  return lines


def _vae_rows(section):
  lines = [
    "| variant | first call s | decode s | peak GB (since start) | error |",
    "|" + " --- |" * 5,
  ]
  for name, e in section.get("variants", {}).items():
    lines.append(
      f"| {name} | {_num(e.get('first_call_s'), 2)} | "
      f"{_num(e.get('seconds'), 2)} | {_num(e.get('peak_gb'), 1)}"
      f" | {e.get('error', '')} |"
    )
  return lines


def _edit_rows(section):
  stages = (
    "mllm_encode",
    "vae_encode",
    "compile",
    "denoise",
    "vae_decode",
    "total",
  )
  lines = [
    "| edit | " + " | ".join(f"{s} s" for s in stages) + " |",
    "|" + " --- |" * (len(stages) + 1),
  ]
  for i, e in enumerate(section.get("edits", []), 1):
    lines.append(
      f"| {i} | " + " | ".join(_num(e.get(s), 2) for s in stages) + " |"
    )
  return lines


SECTION_TITLES = {
  "train": ("DiT train step", _train_rows),
  "infer": ("DiT inference step", _infer_rows),
  "vae": ("VAE decode", _vae_rows),
  "edit": ("Full edit", _edit_rows),
}


def markdown(results: dict[str, Any]) -> str:
  device = results.get("device", {})
  lines = [
    "# GPU suite results",
    "",
    f"`{results.get('command')}` on {results.get('date')}, commit "
    f"{results.get('commit')}: {device.get('device_kind', '?')} "
    f"({device.get('backend', '?')}), jax {device.get('jax', '?')}; "
    f"scale **{results.get('scale')}**; {results.get('elapsed_s', 0):.0f} s"
    f" of a {results.get('budget_s', 0):.0f} s budget.",
    "",
  ]
  if results.get("scale") != "full":
    lines += [
      "Toy sizes on the CPU: the code paths ran; the numbers are "
      "not the targets' measurements.",
      "",
    ]
  lines += [
    "## Targets",
    "",
    "| target | goal | measured | verdict |",
    "| --- | --- | --- | --- |",
  ]
  for t in results.get("targets", []):
    lines.append(
      f"| {t['target']} | {t['goal']} | "
      f"{_num(t['value'], 2, ' ' + t['unit'])} | {t['verdict']} |"
    )
  for name, section in results["sections"].items():
    title, rows = SECTION_TITLES.get(name, (name, None))
    lines += [
      "",
      f"## {title}",
      "",
      f"Status: {section.get('status')} in "
      f"{section.get('seconds', 0):.0f} s (budget "
      f"{section.get('budget_s', 0):.0f} s)."
      + (f" Error: {section['error']}" if section.get("error") else ""),
      "",
    ]
    if rows is not None:
      lines += rows(section)
  return "\n".join(lines) + "\n"


def write(out_dir, results: dict[str, Any]) -> list[pathlib.Path]:
  """Writes both files atomically (JSON first); returns their paths."""
  out_dir = pathlib.Path(out_dir)
  paths = [out_dir / JSON_NAME, out_dir / MARKDOWN_NAME]
  atomic.write_text(paths[0], json.dumps(results, indent=1, default=str) + "\n")
  atomic.write_text(paths[1], markdown(results))
  return paths
