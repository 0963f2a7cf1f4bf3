"""Test setup: 8 fake CPU devices, no hub access, markers, shared fixtures."""

import os

# Must happen before jax initialises its backends.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


def pytest_collection_modifyitems(config, items):
  del config
  backend = jax.default_backend()
  skip_gpu = pytest.mark.skip(reason="needs a GPU")
  skip_tpu = pytest.mark.skip(reason="needs a TPU")
  for item in items:
    if "gpu_only" in item.keywords and backend != "gpu":
      item.add_marker(skip_gpu)
    if "tpu_only" in item.keywords and backend != "tpu":
      item.add_marker(skip_tpu)
    if "torch" in item.keywords:
      try:
        import torch  # noqa: F401
      except ImportError:
        item.add_marker(
          pytest.mark.skip(
            reason="torch not installed (pip install .[convert])"
          )
        )


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
  """A tiny Qwen-style tokenizer saved in a local directory."""
  from kiwi_jax.testing import build_tiny_qwen_tokenizer

  return build_tiny_qwen_tokenizer(tmp_path_factory.mktemp("tokenizer"))
