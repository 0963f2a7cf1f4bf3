"""KiwiTask's model FLOPs: the formula equals the loss's own matmul count,
and the trainer's MFU metric uses it."""

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax import flops
from kiwi_jax.tasks import kiwi_task
from kiwi_jax.train_lib import progress
from kiwi_jax.train_lib.train_state import ModelSplit, Precision
from tests.tasks.conftest import kiwi_config

FP32 = Precision(master_dtype="float32", compute_dtype=None)
STAGE_MODES = [(1, "image"), (2, "video"), (3, "reference")]


@pytest.mark.parametrize("stage,mode", STAGE_MODES)
def test_step_flops_equal_the_loss_gradient_matmul_count(
  stage, mode, kiwi_batches, tiny_tokenizer_dir
):
  batches, ref_tokens = kiwi_batches
  task = kiwi_task.KiwiTask(kiwi_config(stage, tiny_tokenizer_dir, ref_tokens))
  split = ModelSplit.build(
    lambda: task.build_model(nnx.Rngs(0)),
    task.trainable,
    task.frozen,
    precision=FP32,
  )
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  batch = task.global_batch(batches[mode], mesh)

  def loss(params, frozen):
    model = split.merge(params, frozen)
    return task.loss_fn(model, batch, jax.random.key(0))[0]

  counted = flops.jaxpr_matmul_flops(
    jax.grad(loss), split.abstract_params, split.abstract_frozen
  )
  # The XLA attention computes masked pairs too: compare dense counts.
  dense = task.step_flops(batches[mode], dense_attention=True)
  assert counted == dense.train
  attended = task.step_flops(batches[mode])
  assert 0 < attended.train < dense.train
  counts = task.batch_counts(batches[mode])
  assert counts["flops"] == attended.train * jax.process_count()


def test_mfu_uses_the_flops_of_each_batch(monkeypatch):
  clock = iter([0.0, 2.0])
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  reporter = progress.ReportProgress(10, num_chips=2, peak_flops_per_chip=1e12)
  reporter.step_done(1, examples=1, flops=3e12)
  reporter.step_done(2, examples=1, flops=1e12)
  out = reporter.report(2)  # 4e12 FLOPs in 2 s on 2 chips
  assert out["model_flops_per_sec_per_chip"] == pytest.approx(1e12)
  assert out["mfu"] == pytest.approx(1.0)


def test_peak_flops_default_to_the_device_table():
  cpu = progress.ReportProgress(10)
  assert cpu.peak_flops_per_chip is None  # no MFU on a CPU

  class FakeChip:
    device_kind = "NVIDIA H100 80GB HBM3"

  assert flops.peak_flops_per_chip(FakeChip()) == 989e12
  FakeChip.device_kind = "TPU v5 lite"
  assert flops.peak_flops_per_chip(FakeChip()) == 197e12
