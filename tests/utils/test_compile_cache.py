"""The persistent compilation cache: where it goes, and that a restarted
run loads its compiled programs from it."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from kiwi_jax.utils import compile_cache

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_jax_cache_settings():
  names = (
    "jax_compilation_cache_dir",
    "jax_enable_compilation_cache",
    "jax_persistent_cache_min_compile_time_secs",
  )
  saved = {n: getattr(jax.config, n) for n in names}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  jax_cache.reset_cache()


def test_setting_beats_environment_beats_default(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  assert compile_cache.resolve(None, str(tmp_path / "d")) == str(tmp_path / "d")
  assert compile_cache.resolve("", None) is None
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve(None, "/elsewhere") == str(tmp_path / "env")
  assert compile_cache.resolve(tmp_path / "s", "/x") == str(tmp_path / "s")
  assert compile_cache.resolve("gs://b/c", None) == "gs://b/c"
  assert compile_cache.resolve("OFF", "/x") is None
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.user_cache_dir() == str(
    tmp_path / "xdg" / "kiwi_jax" / "jax_cache"
  )


def test_configure_points_jax_at_the_directory_and_off_turns_it_off(
  monkeypatch, tmp_path, restore_jax_cache_settings
):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  assert compile_cache.configure("off", default=str(tmp_path)) is None
  assert not jax.config.jax_enable_compilation_cache
  path = compile_cache.configure(
    None, default=str(tmp_path / "c"), min_compile_secs=0
  )
  assert path == str(tmp_path / "c") and os.path.isdir(path)
  assert jax.config.jax_compilation_cache_dir == path
  assert jax.config.jax_enable_compilation_cache
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(7.0)).block_until_ready()
  assert os.listdir(path)  # the program was written


# Trains the toy task with the trainer, counting persistent-cache events.
_DRIVER = textwrap.dedent("""
    import json, sys
    import jax, ml_collections
    from kiwi_jax.testing.toy_flow import ToyFlowTask
    from kiwi_jax.train_lib import trainer

    counts = {"hits": 0, "misses": 0}
    def listen(event, **kwargs):
      for name in counts:
        if event == f"/jax/compilation_cache/cache_{name}":
          counts[name] += 1
    jax.monitoring.register_event_listener(listen)
    config = ml_collections.ConfigDict(dict(
        seed=0, total_steps=int(sys.argv[2]), log_every=1,
        mesh=dict(data=1, fsdp=1, tensor=1),
        optimizer=dict(learning_rate=1e-2),
        precision=dict(compute_dtype=None), tensorboard=False,
        checkpoint=dict(every=2, keep=1, async_save=False)))
    trainer.train_and_evaluate(config, sys.argv[1], ToyFlowTask(batch_size=2))
    print("COUNTS", json.dumps(counts))
""")


@pytest.mark.slow
def test_second_start_of_a_run_loads_compiled_programs(tmp_path):
  driver = tmp_path / "driver.py"
  driver.write_text(_DRIVER)
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    HF_HUB_OFFLINE="1",
    PYTHONPATH=str(ROOT),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  env.pop(compile_cache.ENV, None)
  workdir = tmp_path / "run"

  def start(total_steps):
    done = subprocess.run(
      [sys.executable, str(driver), str(workdir), str(total_steps)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("COUNTS")]
    return json.loads(line[-1].split(" ", 1)[1])

  first = start(2)
  entries = os.listdir(workdir / "jax_cache")
  assert first["hits"] == 0 and first["misses"] > 0 and entries
  second = start(4)  # resumes at step 2: the same programs again
  assert second["hits"] > 0
  assert second["misses"] < first["misses"]


@pytest.mark.parametrize("name", ["demo", "kiwi_wan22_5b", "kiwi_wan21_14b"])
def test_every_shipped_config_takes_a_cache_override(name):
  import importlib

  config = importlib.import_module(f"configs.{name}").get_config("")
  assert config.compile_cache_dir == ""  # the default: env, else workdir
  config.compile_cache_dir = "off"  # locked configs take the override
  with pytest.raises(AttributeError):
    config.compile_cache_dri = "off"  # and still refuse typos
