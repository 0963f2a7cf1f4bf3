"""One-file weights (``weights_file``) and ``model_init`` from them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax.train_lib import checkpointing, weights_file


def _flat():
  return {
    "b/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a/bias": np.ones(3, np.float32),
  }


def test_bytes_do_not_depend_on_insertion_order(tmp_path):
  flat = _flat()
  reordered = dict(reversed(list(flat.items())))
  assert weights_file.to_bytes(flat) == weights_file.to_bytes(reordered)
  path = tmp_path / "w.safetensors"
  weights_file.save(path, flat)
  assert path.read_bytes() == weights_file.to_bytes(flat)
  loaded = weights_file.load(path)
  for name, value in flat.items():
    np.testing.assert_array_equal(loaded[name], value)


def test_read_casts_and_lists_every_mismatch_together(tmp_path):
  path = tmp_path / "w.safetensors"
  weights_file.save(path, _flat())
  want = {
    "b/kernel": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16),
    "a/bias": jax.ShapeDtypeStruct((3,), jnp.float32),
  }
  out = checkpointing.read_weights(path, want)
  assert out["b/kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out["a/bias"]), np.ones(3))
  bad = {
    "b/kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32),
    "c/lora_a": jax.ShapeDtypeStruct((3,), jnp.float32),
  }
  with pytest.raises(ValueError) as e:
    checkpointing.read_weights(path, bad)
  text = str(e.value)
  assert "missing ['c/lora_a']" in text
  assert "unexpected ['a/bias']" in text
  assert "b/kernel: file (2, 3) vs model (3, 2)" in text


def test_fresh_fills_missing_names(tmp_path):
  path = tmp_path / "w.safetensors"
  weights_file.save(path, _flat())
  want = {
    "b/kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32),
    "a/bias": jax.ShapeDtypeStruct((3,), jnp.float32),
    "c/lora_b": jax.ShapeDtypeStruct((4,), jnp.float32),
  }
  out = weights_file.read(
    path, want, fresh=lambda names: {n: jnp.zeros(4) for n in names}
  )
  assert out["c/lora_b"].shape == (4,)


def test_missing_and_corrupt_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    weights_file.load(tmp_path / "nope.safetensors")
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="bad.safetensors is not a safetensors"):
    weights_file.load(bad)
