"""The curated top-level API resolves, lazily, and never imports torch."""

import subprocess
import sys

import kiwi_jax


def test_every_export_resolves():
  for name in kiwi_jax.__all__:
    assert getattr(kiwi_jax, name) is not None, name


def test_library_import_does_not_pull_torch():
  code = (
    "import sys, kiwi_jax; kiwi_jax.KiwiEdit; kiwi_jax.EditPipeline; "
    "import kiwi_jax.train_lib.trainer, kiwi_jax.data.loader, "
    "kiwi_jax.refvie, kiwi_jax.evaluators; "
    "print('torch' in sys.modules)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == "False", out.stderr
