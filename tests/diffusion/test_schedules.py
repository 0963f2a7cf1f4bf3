"""Schedule tables against a torch restatement of the reference scheduler."""

import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax.diffusion import schedules
from kiwi_jax.diffusion.flow_matching import TrainingGrid


class _TorchFlowMatch:
  """DiffSynth ``FlowMatchScheduler`` as Kiwi-Edit configures it
  (``diffsynth/schedulers/flow_match.py``; shift 5, extra_one_step), and the
  diffusers pipeline's ``_setup_scheduler`` when sigma_min = 0.003/1.002."""

  def __init__(self, sigma_min, num_steps, training=False, strength=1.0):
    import torch

    start = sigma_min + (1.0 - sigma_min) * strength
    s = torch.linspace(start, sigma_min, num_steps + 1)[:-1]
    self.sigmas = 5.0 * s / (1 + 4.0 * s)
    self.timesteps = self.sigmas * 1000
    if training:
      x = self.timesteps
      y = torch.exp(-2 * ((x - num_steps / 2) / num_steps) ** 2)
      y = y - y.min()
      self.weights = y * (num_steps / y.sum())

  def index(self, timestep):
    import torch

    return int(torch.argmin((self.timesteps - timestep).abs()))


@pytest.mark.torch
@pytest.mark.parametrize(
  "name,sigma_min", [("diffsynth", 0.0), ("diffusers", 0.003 / 1.002)]
)
@pytest.mark.parametrize(
  "num_steps,strength", [(50, 1.0), (1000, 1.0), (29, 0.7), (1, 1.0)]
)
def test_tables_match_reference(name, sigma_min, num_steps, strength):
  ref = _TorchFlowMatch(sigma_min, num_steps, strength=strength)
  schedule = schedules.get_schedule(name)
  sigmas = schedule.sigmas(num_steps, strength)
  timesteps = schedule.timesteps(num_steps, strength)
  assert sigmas.dtype == np.float32 and sigmas.shape == (num_steps,)
  np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=0, atol=1e-6)
  # Timesteps are 1000x larger: 1e-6 relative.
  np.testing.assert_allclose(
    timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=0
  )


@pytest.mark.torch
def test_training_weights_and_bf16_lookup_match_reference():
  import torch

  ref = _TorchFlowMatch(0.0, 1000, training=True)
  grid = TrainingGrid.from_schedule("diffsynth")
  # A 1-ulp timestep difference (torch's vectorised linspace rounds a few
  # entries differently) moves a weight by ~6e-6 relative near t = 1000,
  # where w = y - min(y) is small.
  np.testing.assert_allclose(
    grid.weights, ref.weights.numpy(), rtol=1e-5, atol=1e-6
  )
  # The reference's lookup: nearest entry to the bf16 timestep, every id.
  t_bf16 = ref.timesteps.to(torch.bfloat16)
  expected = [ref.index(t_bf16[i]) for i in range(1000)]
  ours = schedules.nearest_index(
    grid.timesteps, schedules.to_bf16(grid.timesteps)
  )
  np.testing.assert_array_equal(np.asarray(ours), expected)
  np.testing.assert_array_equal(
    np.asarray(schedules.to_bf16(grid.timesteps), np.float32),
    t_bf16.float().numpy(),
  )


def test_spot_values_from_the_spec():
  sigmas = schedules.DIFFSYNTH.sigmas(50)
  np.testing.assert_allclose(
    sigmas[[0, 1, -2, -1]], [1.0, 0.99593, 0.17241, 0.09259], atol=1e-5
  )
  assert schedules.DIFFUSERS.sigmas(50)[-1] == pytest.approx(0.10504, abs=1e-5)
  # DiT input timesteps in bf16: 1000, 996, 992, ...
  t = np.asarray(
    schedules.to_bf16(schedules.DIFFSYNTH.timesteps(50)), np.float32
  )
  np.testing.assert_array_equal(t[:3], [1000.0, 996.0, 992.0])
  grid = TrainingGrid.from_schedule()
  assert grid.timesteps[0] == 1000.0
  assert grid.timesteps[-1] == pytest.approx(4.98, abs=5e-3)
  assert grid.weights.max() == pytest.approx(2.076, abs=1e-3)
  assert grid.weights[0] == 0.0  # t = 1000
  assert grid.weights[-1] == pytest.approx(0.032, abs=1e-3)
  assert grid.weights.mean() == pytest.approx(1.0, abs=1e-5)


def test_bf16_collapse_to_294_effective_sigmas():
  grid = TrainingGrid.from_schedule()
  index = np.asarray(
    schedules.nearest_index(grid.timesteps, schedules.to_bf16(grid.timesteps))
  )
  assert len(np.unique(index)) == 294
  # ids 0..9 land on t = 1000 (weight 0), id 10 does not.
  assert (index[:10] == 0).all() and index[10] != 0
  assert np.median(grid.sigmas[index]) == pytest.approx(0.83, abs=0.01)
  assert grid.weights[index].mean() == pytest.approx(1.0, abs=0.02)


def test_lookup_any_shape_and_errors():
  timesteps = schedules.DIFFSYNTH.timesteps(7)
  sigmas = schedules.DIFFSYNTH.sigmas(7)
  t = jnp.asarray(timesteps[[[1, 3], [6, 0]]]).astype(jnp.bfloat16)
  looked_up = schedules.lookup_sigma(sigmas, timesteps, t)
  np.testing.assert_array_equal(looked_up, sigmas[[[1, 3], [6, 0]]])
  with pytest.raises(ValueError, match="diffsynth"):
    schedules.get_schedule("ddim")
  with pytest.raises(ValueError, match="denoising_strength"):
    schedules.DIFFSYNTH.sigmas(5, denoising_strength=0.0)


def test_shift_replaces_the_schedules_shift():
  assert schedules.get_schedule("diffsynth") is schedules.DIFFSYNTH
  assert schedules.get_schedule("diffsynth", 5.0) is schedules.DIFFSYNTH
  even = schedules.get_schedule("diffsynth", 1.0)
  # Shift 1 leaves the raw grid as it is: 10 steps from strength 0.9 end
  # with a step from 0.09, not from 5 * 0.09 / (1 + 4 * 0.09) = 0.33.
  np.testing.assert_allclose(
    even.sigmas(10, 0.9), np.linspace(0.9, 0.0, 11)[:-1], atol=1e-6
  )
  np.testing.assert_allclose(
    schedules.DIFFSYNTH.sigmas(10, 0.9)[-1], 0.45 / 1.36, rtol=1e-6
  )
  three = schedules.get_schedule("diffusers", 3.0)
  assert three.sigma_min == schedules.DIFFUSERS.sigma_min
  s = schedules.DIFFUSERS.sigmas(7) / (5 - 4 * schedules.DIFFUSERS.sigmas(7))
  np.testing.assert_allclose(three.sigmas(7), 3 * s / (1 + 2 * s), rtol=1e-5)
  # The training grid follows the shift: shift 1 draws sigmas uniformly.
  grid = TrainingGrid.from_schedule(even, "uniform")
  assert abs(float(np.mean(grid.sigmas < 0.33)) - 0.33) < 0.01
  for bad in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="shift"):
      schedules.get_schedule("diffsynth", bad)
