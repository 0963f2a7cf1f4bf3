"""`kiwi-edit --cache-threshold` and ``EditPipeline(cache_threshold=)``:
help text, and one-line errors for bad values before any model work."""

import pytest

from kiwi_jax.cli import edit as cli
from kiwi_jax.pipeline import EditPipeline
from kiwi_jax.pipeline import inputs as inputs_lib
from tests.pipeline.test_cli_guards import (
  no_model,  # noqa: F401
  one_error_line,
)


def test_help_names_the_rule_and_the_default():
  parser = cli.build_parser()
  action = next(
    a
    for a in parser._actions  # pylint: disable=protected-access
    if "--cache-threshold" in a.option_strings
  )
  assert action.default is None
  assert "residual" in action.help and "docs/step_cache.md" in action.help


@pytest.mark.parametrize(
  "extra,needle",
  [
    (["--cache-threshold", "-0.1"], "number >= 0"),
    (["--cache-threshold", "nan"], "finite number >= 0"),
    (["--cache-threshold", "inf"], "finite number >= 0"),
    (["--cache-threshold", "fast"], "invalid float value"),
    (["--cache-threshold", "0.1", "--guidance-scale", "2"], "does not combine"),
  ],
)
def test_bad_cache_threshold_is_one_line_before_loading(
  toy_checkpoint,
  media,
  tmp_path,
  capsys,
  no_model,  # noqa: F811
  extra,
  needle,
):
  out = tmp_path / "o.mp4"
  line = one_error_line(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--prompt",
    "x",
    "--out",
    out,
    "--no-progress",
    *extra,
  )
  assert needle in line and "--cache-threshold" in line
  assert not out.exists()


def test_model_without_a_dit_is_refused_in_one_line(toy_pipeline, sample):
  # Every checkpoint kiwi-edit opens is a KiwiEdit (it has a DiT), so the
  # model without one is the toy editor, through the Python API.
  source, _, prompt = sample
  with pytest.raises(inputs_lib.EditInputError) as info:
    toy_pipeline.edit(source, prompt, steps=2, cache_threshold=0.1)
  message = str(info.value)
  assert "no DiT to cache" in message and "\n" not in message


@pytest.mark.parametrize("bad", [-1, "0.1", float("nan"), True])
def test_edit_pipeline_refuses_bad_thresholds(toy_checkpoint, sample, bad):
  pipe = EditPipeline.from_pretrained(toy_checkpoint)
  source, _, prompt = sample
  with pytest.raises(inputs_lib.EditInputError, match="cache_threshold"):
    pipe.edit(source, prompt, steps=2, cache_threshold=bad)
