"""``--config.*`` overrides: every type, lists included, and the hints."""

import pytest

from configs import demo as demo_config
from kiwi_jax.train_lib import config_overrides as co


def _apply(config, *args):
  rest, overrides = co.split_overrides(["train.py", *args])
  positional = co.apply(config, overrides)
  return rest[1:], positional


def test_overrides_of_every_type_lists_included():
  config = demo_config.get_config("runlocal")
  config.unlock()
  config.kiwi.data.sources = [{"path": "a", "weight": 1.0}]
  config.lock()
  rest, positional = _apply(
    config,
    "--config=configs/demo.py",
    "--config.demo.stage_steps=[2,8,2]",
    "--config.demo.learning_rates",
    "(1e-4, 2e-4, 3e-4)",
    "--config.seed",
    "7",
    "--noconfig.tensorboard",
    "--workdir=w",
    "--config.optimizer.learning_rate=1",
    "--config.model_init=ckpt/3",
    "--config.kiwi.data.sources[0].weight=2.5",
    "--config.kiwi.data.fixed_size=(16,16)",
  )
  assert rest == ["--config=configs/demo.py", "--workdir=w"]
  assert not positional
  assert config.demo.stage_steps == [2, 8, 2]
  assert config.demo.learning_rates == [1e-4, 2e-4, 3e-4]
  assert config.seed == 7 and config.tensorboard is False
  assert config.optimizer.learning_rate == 1.0
  assert isinstance(config.optimizer.learning_rate, float)
  assert config.model_init == "ckpt/3"
  assert config.kiwi.data.sources[0]["weight"] == 2.5
  assert config.kiwi.data.fixed_size == (16, 16)
  # A boolean takes no value: the next token is a positional argument.
  _, positional = _apply(config, "--config.tensorboard", "extra")
  assert config.tensorboard is True and positional == ["extra"]


@pytest.mark.parametrize(
  "arg, message",
  [
    ("--config.optimizer.lr=1", "did you mean optimizer.learning_rate?"),
    ("--config.optimizer.lrate=1", "did you mean optimizer.learning_rate?"),
    ("--config.kiwi.dta.batch_size=1", "did you mean kiwi.data.batch_size?"),
    ("--config.demo.zzz=1", "demo has: base, base_batch_size,"),
    ("--config.seed.x=1", "seed is a setting (seed=0), not a group"),
    ("--config.seed=1.5", "seed expects an integer; got '1.5'"),
    ("--config.tensorboard=maybe", "expects true or false"),
    ("--config.demo.stage_steps=[1,", "expects a list like"),
    ("--config.optimizer=3", "optimizer is a group of settings"),
    ("--config.kiwi.data.sources[0].path=x", "has 0 items; [0] is out"),
    ("--config.seed", "needs a value"),
    ("--noconfig.seed", "is not a boolean"),
  ],
)
def test_mistakes_name_the_key_and_the_closest_ones(arg, message):
  config = demo_config.get_config("runlocal")
  with pytest.raises(co.ConfigOverrideError) as caught:
    _apply(config, arg)
  assert message in str(caught.value)
  assert "\n" not in str(caught.value)
