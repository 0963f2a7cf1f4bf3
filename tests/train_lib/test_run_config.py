"""The run config declared once: shipped configs declare every key the
trainer and the tasks read, overrides reach them, code reads no raw keys."""

import ast
import dataclasses
import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from kiwi_jax.tasks.kiwi_config import DemoConfig, KiwiConfig
from kiwi_jax.testing.toy_flow import ToyFlowTask
from kiwi_jax.train_lib import config_overrides, run_config, train_step, trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = ("kiwi_wan22_5b", "kiwi_wan21_14b", "demo")


def _cases():
  for name in SHIPPED:
    module = importlib.import_module(f"configs.{name}")
    for arg in module.TEST_ARGS:
      yield name, arg


def _declared(cls, prefix=""):
  """Dotted keys of a dataclass (groups expanded), as a config holds them."""
  keys = set()
  # pylint: disable=protected-access
  hints = run_config._hints(cls)
  for field in dataclasses.fields(cls):
    hint = run_config._optional_arg(hints[field.name])
    if dataclasses.is_dataclass(hint):
      keys |= _declared(hint, f"{prefix}{field.name}.")
    else:
      keys.add(prefix + field.name)
  return keys


def _keys(node, prefix=""):
  keys = set()
  for key in node.keys():
    value = node[key]
    if hasattr(value, "keys") and key not in ("mesh", "model"):
      keys |= _keys(value, f"{prefix}{key}.")
    else:
      keys.add(prefix + key)
  return keys


@pytest.mark.parametrize("name, arg", list(_cases()))
def test_shipped_configs_declare_every_key_and_parse(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  keys = _keys(config)
  wanted = _declared(run_config.TrainerConfig)
  wanted |= {f"kiwi.{k}" for k in _declared(KiwiConfig)}
  if "demo" in config:
    wanted |= {f"demo.{k}" for k in _declared(DemoConfig)}
  assert wanted <= keys, sorted(wanted - keys)
  assert "task" in keys
  run = run_config.TrainerConfig.from_config(config)
  kiwi = KiwiConfig.from_config(config.kiwi)  # strict: no undeclared key
  assert run.total_steps == config.total_steps
  assert kiwi.data.sources == tuple(kiwi.data.sources)
  if "demo" in config:
    DemoConfig.from_config(config.demo)


def test_overrides_of_the_keys_the_5b_config_lacked():
  config = importlib.import_module("configs.kiwi_wan22_5b").get_config("")
  _, overrides = config_overrides.split_overrides(
    [
      "train.py",
      "--config.peak_flops_per_chip=989e12",
      "--config.eval_every=100",
      "--config.wandb.project=kiwi",
      "--config.wandb.name=s1",
      "--config.kiwi.sample_steps=4",
      "--config.kiwi.sample_count=2",
      "--config.log_first_steps=3",
      "--config.optimizer.warmup_steps=7",
      "--config.precision.frozen_dtype=bfloat16",
      "--config.profile.start_step=20",
    ]
  )
  config_overrides.apply(config, overrides)
  run = run_config.TrainerConfig.from_config(config)
  kiwi = KiwiConfig.from_config(config.kiwi)
  assert run.peak_flops_per_chip == 989e12
  assert run.eval_every == 100 and run.log_first_steps == 3
  assert run.wandb == run_config.WandbConfig(project="kiwi", name="s1")
  assert run.optimizer.warmup_steps == 7
  assert run.precision.frozen_dtype == "bfloat16"
  assert run.profile.start_step == 20
  assert (kiwi.sample_steps, kiwi.sample_count) == (4, 2)


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.kiwi.sample_stpes=3", "did you mean kiwi.sample_steps?"),
    ("--config.peak_flops=1", "did you mean peak_flops_per_chip?"),
    ("--config.wandb.projcet=x", "did you mean wandb.project?"),
  ],
)
def test_an_undeclared_key_is_a_one_line_error(override, message):
  config = importlib.import_module("configs.kiwi_wan22_5b").get_config("")
  _, overrides = config_overrides.split_overrides(["train.py", override])
  with pytest.raises(config_overrides.ConfigOverrideError, match=message):
    config_overrides.apply(config, overrides)


def test_parse_errors_name_the_key():
  with pytest.raises(run_config.ConfigError, match="required"):
    run_config.TrainerConfig.from_config({})
  with pytest.raises(run_config.ConfigError, match="log_every expects int"):
    run_config.TrainerConfig.from_config(
      {"total_steps": 1, "log_every": "often"}
    )
  with pytest.raises(run_config.ConfigError, match=r"wandb\.entity"):
    run_config.TrainerConfig.from_config(
      {"total_steps": 1, "wandb": {"entity": "me"}}
    )
  with pytest.raises(run_config.ConfigError, match="group optimizer"):
    run_config.TrainerConfig.from_config(
      {"total_steps": 1, "optimizer": {"decay": "linear"}}
    )
  with pytest.raises(run_config.ConfigError, match=r"kiwi\.data\.sources"):
    KiwiConfig.from_config(
      {"variant": "tiny", "data": {"sources": [{"path": "a"}]}}
    )
  # Unset keys and None take the declared defaults.
  run = run_config.TrainerConfig.from_config({"total_steps": 2, "seed": None})
  assert run.seed == 0 and run.log_every == 50 and run.profile.start_step < 0


# Modules that read the run config: only through the parsed dataclasses.
_READERS = (
  "kiwi_jax/train_lib/trainer.py",
  "kiwi_jax/tasks/kiwi_task.py",
  "kiwi_jax/tasks/demo.py",
)
_RAW_NAMES = ("config", "kiwi", "demo", "data", "stage_cfg", "out")


def _raw_reads(path):
  """``_get(...)``, ``mesh_from_config(...)`` and ``<config>.get(...)``."""
  found = []
  for node in ast.walk(ast.parse((ROOT / path).read_text())):
    if not isinstance(node, ast.Call):
      continue
    func = node.func
    name = getattr(func, "id", None) or getattr(func, "attr", None)
    if name in ("_get", "mesh_from_config"):
      found.append(f"{path}:{node.lineno} {name}")
    if isinstance(func, ast.Attribute) and func.attr == "get":
      owner = func.value
      owner_name = getattr(owner, "id", None) or getattr(owner, "attr", None)
      if owner_name in _RAW_NAMES:
        found.append(f"{path}:{node.lineno} {owner_name}.get")
  return found


def test_trainer_and_tasks_read_no_raw_config_keys():
  found = [hit for path in _READERS for hit in _raw_reads(path)]
  assert not found, found
  # The check does find such reads.
  assert _raw_reads("kiwi_jax/sharding.py")  # mesh_from_config itself


class _FlopsTask(ToyFlowTask):
  flops_per_step = 1e6

  def evaluate(self, model, step):
    del model
    return {"eval/step": float(step)}


def test_the_trainer_uses_overrides_of_the_keys_the_configs_lacked(
  tmp_path, monkeypatch
):
  builds = []
  build = train_step.abstract_train_state
  monkeypatch.setattr(
    train_step,
    "abstract_train_state",
    lambda *a, **k: builds.append(1) or build(*a, **k),
  )
  config = run_config.base_config(total_steps=2, task="toy")
  config.tensorboard = False
  config.precision.compute_dtype = None
  config.optimizer.learning_rate = 1e-2
  config.lock()
  _, overrides = config_overrides.split_overrides(
    [
      "train.py",
      "--config.peak_flops_per_chip=1e9",
      "--config.eval_every=2",
      "--config.log_every=1",
      "--config.mesh.fsdp=2",
      "--config.mesh.tensor=2",
      "--config.checkpoint.async_save=false",
    ]
  )
  config_overrides.apply(config, overrides)
  trainer.train_and_evaluate(config, tmp_path, _FlopsTask(batch_size=4))
  records = [
    json.loads(line)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  assert len(builds) == 1  # for the init, the restore target and the step
  assert any("mfu" in r for r in records)  # peak_flops_per_chip was read
  assert [r["step"] for r in records if "eval/step" in r] == [2]
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["peak_flops_per_chip"] == 1e9


TOY_CONFIG = """
from kiwi_jax.train_lib import run_config

def get_config():
  config = run_config.base_config(
      total_steps=2, task="toy_task:make")
  config.lock()
  return config
"""


def test_train_py_rejects_a_bad_value_in_one_line(tmp_path):
  (tmp_path / "toy_config.py").write_text(TOY_CONFIG)
  (tmp_path / "toy_task.py").write_text(
    "from kiwi_jax.testing.toy_flow import ToyFlowTask\n"
    "def make(config):\n  return ToyFlowTask(batch_size=2)\n"
  )
  env = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]),
  )
  done = subprocess.run(
    [
      sys.executable,
      "train.py",
      f"--config={tmp_path / 'toy_config.py'}",
      f"--workdir={tmp_path / 'run'}",
      "--config.optimizer.decay=linear",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if "error" in line]
  assert errors == [
    "train.py: error: config group optimizer: "
    "decay='linear'; choose 'none' or 'cosine'."
  ], errors
  assert not (tmp_path / "run" / "checkpoints").exists()
