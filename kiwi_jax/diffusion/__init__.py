"""Flow matching: schedules, training loss and the Euler sampler."""

from kiwi_jax.diffusion.flow_matching import (
  NoiseLevel,
  TrainingGrid,
  add_noise,
  flow_matching_loss,
  noise_level_at,
  sample_noise_level,
  velocity_target,
  weighted_mse,
)
from kiwi_jax.diffusion.sampler import (
  SamplingPlan,
  denoise,
  euler_loop,
  euler_step,
  initial_noise,
  sample,
  start_latents,
)
from kiwi_jax.diffusion.schedules import (
  DIFFSYNTH,
  DIFFUSERS,
  FlowMatchSchedule,
  get_schedule,
  lookup_sigma,
  model_timestep,
  nearest_index,
  to_bf16,
)

__all__ = [
  "DIFFSYNTH",
  "DIFFUSERS",
  "FlowMatchSchedule",
  "NoiseLevel",
  "SamplingPlan",
  "TrainingGrid",
  "add_noise",
  "denoise",
  "euler_loop",
  "euler_step",
  "flow_matching_loss",
  "get_schedule",
  "initial_noise",
  "lookup_sigma",
  "model_timestep",
  "nearest_index",
  "noise_level_at",
  "sample",
  "sample_noise_level",
  "start_latents",
  "to_bf16",
  "velocity_target",
  "weighted_mse",
]
