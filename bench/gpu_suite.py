"""One prepared GPU suite: the issue-16 measurements in one call.

On one H100/H200, with random weights of the ``configs/kiwi_wan22_5b.py``
shapes (Kiwi-Edit 5B: the Wan2.2-TI2V-5B DiT, Qwen2.5-VL-3B, the Wan2.2
VAE), bf16, at 704 x 1280 x 81 frames (21 x 44 x 80 latents, 18,480 DiT
tokens), it measures

* ``train``: the DiT train step (forward + backward, remat policies of
  ``--train_remat``) as time, TFLOP/s and MFU (model FLOPs from
  ``kiwi_jax.flops.dit_flops``, peak from ``kiwi_jax/flops/peak.py``);
* ``infer``: the DiT inference step against diffusers'
  ``WanTransformer3DModel`` (bf16, its fastest attention backend) in the
  same process, same shapes, both warm, as a ratio;
* ``vae``: VAE decode time and peak memory (tiled, as the pipeline runs
  it, then one program and untiled);
* ``edit``: one full 50-step edit through ``EditPipeline``;

then writes ``gpu_results.json`` and ``gpu_results.md`` to ``--out``
(atomically, after every section) and prints PASS/FAIL per target: train
MFU >= 50 %, inference >= 1.5x diffusers, 50 DiT steps <= 30 s (H200),
VAE decode <= 4 s and <= 40 GB.

Each section runs in its own process under a time budget (unused time
passes on to the next); one that fails (out of memory, say) or outlives its
budget is recorded with its error and partial numbers, and the suite goes
on. The whole run stays inside ``--budget_s`` (430 s).

  python bench/gpu_suite.py --out docs/              # on a GPU
  python bench/gpu_suite.py --scale_run_on_cpu       # toy sizes on CPU
  python bench/gpu_suite.py --sections train,infer --out /tmp/r

On the device machine: its image has Python 3.12, jax 0.11 (CUDA),
torch, transformers, flax, optax, orbax, einops, etils, pillow and
safetensors (KINDS.md's list), but not
diffusers (the infer baseline) nor PyAV (``av``, which
``kiwi_jax.pipeline`` imports). Fetch their wheels here once, into
``.whl/`` at the repo root (ignored by ``.gitignore``; about 42 MB of the
carried tree's 64 MiB):

  bash bench/gpu_suite_wheels.sh        # diffusers 0.42.1, av 18.1.0

then, in one call of the device tool with ``carry=[".whl"]`` and
``timeout_s=480`` (the install takes about 20 s, the suite at most
``--budget_s``):

  set -o pipefail; python3 -m pip install -q --no-index --no-deps \\
    --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \\
    || exit; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; \\
  python3 bench/gpu_suite.py --out "$OUT" --commit <sha> 2>&1 \\
    | tee "$OUT/gpu_suite.log"

The results are rewritten into ``$OUT`` after every section, so a call cut
short still returns the sections it finished; copy ``gpu_results.json`` and
``gpu_results.md`` from the returned files into ``docs/``. With
``--scale_run_on_cpu`` the default ``--out`` is ``runs/gpu_suite_toy``,
so a toy run never replaces the results in ``docs/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTIONS = ("train", "infer", "vae", "edit")
# Nominal seconds per section (full size), summing to about the default
# budget; time a section leaves unused passes on to the next.
NOMINAL_S = {"probe": 40, "train": 120, "infer": 90, "vae": 70, "edit": 130}
# Share of the GPU's memory JAX takes per section; the infer section
# leaves room for torch in the same process.
MEM_FRACTION = {"infer": "0.45"}
DEFAULT_REMAT = "full,save_qkv_attention"
# Toy sizes compile faster than they run slowly: no backend optimisation.
TOY_XLA_FLAGS = (
  "--xla_backend_optimization_level=0",
  "--xla_llvm_disable_expensive_passes=true",
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--sections",
    default=",".join(SECTIONS),
    help=f"comma-separated, of {','.join(SECTIONS)}",
  )
  parser.add_argument(
    "--out",
    default=None,
    help="output folder (default docs/, or "
    "runs/gpu_suite_toy with --scale_run_on_cpu)",
  )
  parser.add_argument(
    "--scale_run_on_cpu",
    action="store_true",
    help="every section at toy sizes on the CPU",
  )
  parser.add_argument(
    "--budget_s", type=float, default=430.0, help="time for the whole suite"
  )
  parser.add_argument(
    "--train_remat",
    default=DEFAULT_REMAT,
    help="remat policies of the train step, in order",
  )
  parser.add_argument(
    "--commit", default=None, help="commit to report (default: git, if any)"
  )
  parser.add_argument(
    "--cache_dir",
    default="/tmp/kiwi_gpu_suite_cache",
    help="JAX's persistent compilation cache ('' = off)",
  )
  # Internal: one section in this process.
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--child_out", default=None, help=argparse.SUPPRESS)
  parser.add_argument(
    "--deadline", type=float, default=None, help=argparse.SUPPRESS
  )
  args = parser.parse_args(argv)
  args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
  bad = [s for s in args.section_list if s not in SECTIONS]
  if bad or not args.section_list:
    parser.error(
      f"--sections: unknown {bad or 'empty list'}; choose from "
      f"{','.join(SECTIONS)}"
    )
  from kiwi_jax.models.dit.config import REMAT_POLICIES

  args.remat_list = [
    p.strip() for p in args.train_remat.split(",") if p.strip()
  ]
  bad = [p for p in args.remat_list if p not in REMAT_POLICIES]
  if bad or not args.remat_list:
    parser.error(
      f"--train_remat: unknown {bad or 'empty list'}; choose "
      f"from {','.join(REMAT_POLICIES)}"
    )
  if args.budget_s <= 0:
    parser.error(f"--budget_s must be positive, got {args.budget_s}")
  if args.out is None:
    args.out = "runs/gpu_suite_toy" if args.scale_run_on_cpu else "docs"
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    parser.error(f"--out {args.out} is a file, not a folder")
  return args


# -- Child: one section.


def run_child(args) -> int:
  from bench.suite import common

  scale = common.TOY if args.scale_run_on_cpu else common.FULL
  rec = common.Recorder(args.child_out)
  rec.set(device=common.device_info())
  deadline = common.Deadline(args.deadline)
  if args.child == "probe":
    return 0
  if args.child in ("train", "infer"):
    from bench.suite import dit

    if args.child == "train":
      dit.train(scale, rec, deadline, args.remat_list)
    else:
      dit.infer(scale, rec, deadline)
  elif args.child == "vae":
    from bench.suite import vae

    vae.decode(scale, rec, deadline)
  else:
    from bench.suite import edit

    edit.run(scale, rec, deadline)
  return 0


# -- Parent: the sections in turn, each in its own process.


def child_env(args, section):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), env.get("PYTHONPATH")) if p
  )
  env.setdefault("HF_HUB_OFFLINE", "1")
  if args.scale_run_on_cpu:
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = " ".join(
      filter(None, (env.get("XLA_FLAGS"),) + TOY_XLA_FLAGS)
    )
  else:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = MEM_FRACTION.get(section, "0.9")
    if section == "probe":  # asks for the device only, takes no memory
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.cache_dir:
      env["JAX_COMPILATION_CACHE_DIR"] = args.cache_dir
  return env


def run_section(args, section, budget, workdir) -> dict:
  """Runs one section's process; returns its results with a status."""
  out = pathlib.Path(workdir) / f"{section}.json"
  start = time.time()
  soft = start + budget - max(5.0, 0.1 * budget)
  command = [
    sys.executable,
    str(pathlib.Path(__file__).resolve()),
    "--child",
    section,
    "--child_out",
    str(out),
    "--deadline",
    str(soft),
    "--train_remat",
    args.train_remat,
  ]
  if args.scale_run_on_cpu:
    command.append("--scale_run_on_cpu")
  print(f"== {section}: budget {budget:.0f} s", flush=True)
  proc = subprocess.Popen(
    command, env=child_env(args, section), cwd=str(REPO), start_new_session=True
  )
  status, error = "ok", None
  try:
    code = proc.wait(timeout=budget)
    if code:
      status, error = "error", f"the section's process exited with {code}"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status, error = "timeout", f"stopped at its budget of {budget:.0f} s"
  result = json.loads(out.read_text()) if out.exists() else {}
  result.update(status=status, seconds=time.time() - start, budget_s=budget)
  if error:
    result["error"] = error
  print(f"== {section}: {status} in {result['seconds']:.0f} s", flush=True)
  return result


def git_commit() -> str:
  try:
    return subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def run_parent(args) -> int:
  from bench.suite import report

  start = time.time()
  budget_end = start + args.budget_s
  scale = "toy" if args.scale_run_on_cpu else "full"
  results = {
    "command": "python bench/gpu_suite.py " + " ".join(sys.argv[1:]),
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    "commit": args.commit or git_commit(),
    "scale": scale,
    "budget_s": args.budget_s,
    "sections": {},
  }
  factor = 1.0
  with tempfile.TemporaryDirectory(prefix="gpu_suite_") as workdir:
    probe = run_section(args, "probe", NOMINAL_S["probe"], workdir)
    results["device"] = probe.get("device", {})
    backend = results["device"].get("backend")
    if probe["status"] != "ok" or (
      backend != "gpu" and not args.scale_run_on_cpu
    ):
      print(
        f"No GPU for the suite (JAX backend {backend!r}, probe "
        f"{probe['status']}); run on a GPU, or with --scale_run_on_cpu "
        "for the toy-size check.",
        file=sys.stderr,
      )
      return 2
    carry = 0.0
    for index, section in enumerate(args.section_list):
      later = sum(NOMINAL_S[s] * factor for s in args.section_list[index + 1 :])
      left = budget_end - time.time()
      budget = min(NOMINAL_S[section] * factor + carry, left - 0.5 * later)
      if budget < 10:
        results["sections"][section] = {
          "status": "skipped",
          "error": "no time left in --budget_s",
        }
        continue
      result = run_section(args, section, budget, workdir)
      carry = max(0.0, budget - result["seconds"])
      results["sections"][section] = result
      results["elapsed_s"] = time.time() - start
      results["targets"] = report.targets(results)
      report.write(args.out, results)
  results["elapsed_s"] = time.time() - start
  results["targets"] = report.targets(results)
  paths = report.write(args.out, results)
  print()
  for t in results["targets"]:
    value = "-" if t["value"] is None else f"{t['value']:.2f} {t['unit']}"
    print(f"{t['verdict']:4s}  {t['target']}: {value} (goal {t['goal']})")
  print(f"wrote {', '.join(map(str, paths))} in {results['elapsed_s']:.0f} s")
  return 0


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    return run_child(args)
  return run_parent(args)


if __name__ == "__main__":
  sys.exit(main())
