"""The pipeline's denoising against a PyTorch restatement of the reference
loop (`WanVideoPipeline.__call__` + `FlowMatchScheduler`, spec 5.1), same
initial noise, fp32.

The velocity model is the toy editor restated in torch with the same
weights; the loop, schedule, bf16 timestep and nearest-entry sigma lookup
are the reference's, written here from the spec.
"""

import numpy as np
import pytest

from kiwi_jax.pipeline import EditPipeline, stages
from kiwi_jax.pipeline import inputs as inputs_lib

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class TorchFlowMatchScheduler:
  """`FlowMatchScheduler(shift=5, sigma_min=..., extra_one_step=True)` at
  inference: `set_timesteps`, `step`, `get_sigma`."""

  def __init__(self, num_steps, sigma_min=0.0, shift=5.0, strength=1.0):
    start = sigma_min + (1.0 - sigma_min) * strength
    sigmas = torch.linspace(start, sigma_min, num_steps + 1)[:-1]
    self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    self.timesteps = self.sigmas * 1000

  def _index(self, t):
    return torch.argmin((self.timesteps - t.float()).abs())

  def get_sigma(self, t):
    return self.sigmas[self._index(t)]

  def step(self, v, t, sample):
    i = self._index(t)
    sigma = self.sigmas[i]
    nxt = 0.0 if i + 1 >= len(self.sigmas) else self.sigmas[i + 1]
    return sample + v * (nxt - sigma)


def torch_toy_velocity(w, z, t_bf16, sigma, context, source, ref):
  """ToyEditor.denoise_step restated (fp32)."""
  dense = lambda x, name: x @ w[name + "/kernel"] + w[name + "/bias"]
  b, f, h, ww, c = z.shape
  x = dense(z.reshape(b, -1, c), "in_proj")
  if source is not None:
    x = x + sigma * dense(source.reshape(b, -1, c), "source_proj")
  half = x.shape[-1] // 2
  freqs = torch.tensor(np.power(
      10000.0, -np.arange(half, dtype=np.float64) / half).astype(np.float32))
  args = t_bf16.float()[:, None] * freqs
  s = torch.cat([torch.cos(args), torch.sin(args)], -1)
  x = x + dense(s, "time_proj")[:, None]
  x = x + dense(context, "context_proj").mean(1, keepdim=True)
  if ref is not None:
    x = x + dense(ref.reshape(b, -1, c), "ref_proj").mean(1, keepdim=True)
  hidden = torch.nn.functional.gelu(dense(x, "mlp/fc1"), approximate="tanh")
  x = x + dense(hidden, "mlp/fc2")
  return dense(x, "out_proj").reshape(b, f, h, ww, c)


def reference_loop(w, noise, context, source, ref, num_steps, sigma_min):
  scheduler = TorchFlowMatchScheduler(num_steps, sigma_min)
  z = noise.clone()
  for t in scheduler.timesteps:
    t_model = t.unsqueeze(0).to(torch.bfloat16)
    v = torch_toy_velocity(w, z, t_model, scheduler.get_sigma(t_model),
                           context, source, ref)
    z = scheduler.step(v, t, z)
  return z


def flat_weights(pipe):
  from flax import nnx
  out = {}

  def walk(tree, prefix):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        out[f"{prefix}{k}"] = torch.tensor(np.asarray(v))

  walk(nnx.to_pure_dict(pipe.state), "")
  return out


@pytest.mark.parametrize("scheduler,sigma_min,steps,use_ref", [
    ("diffsynth", 0.0, 11, True),
    ("diffusers", 0.003 / 1.002, 7, False),
])
def test_pipeline_latents_match_reference_loop(toy_checkpoint, sample,
                                               scheduler, sigma_min, steps,
                                               use_ref):
  source_frames, ref_image, prompt = sample
  ref_image = ref_image if use_ref else None
  pipe = EditPipeline.from_pretrained(toy_checkpoint)
  clip = inputs_lib.load_source(source_frames)
  rng = np.random.default_rng(1)
  noise = rng.standard_normal((1, 3, 4, 6, 4)).astype(np.float32)
  result = pipe.edit(clip, prompt, ref_image, steps=steps,
                     scheduler=scheduler, noise=noise)

  # The same conditions and source/reference latents, from the JAX stages.
  batch = pipe.processor(prompt, frames=clip.frames, ref_image=ref_image)
  context = stages.encode_conditions(pipe.graphdef, pipe.state, batch)
  source = stages.encode_video(
      pipe.graphdef, pipe.state,
      inputs_lib.to_model_range(clip.frames)[None])
  ref = None
  if ref_image is not None:
    padded = inputs_lib.pad_reference(ref_image, *clip.size)
    ref = torch.tensor(np.asarray(stages.encode_video(
        pipe.graphdef, pipe.state,
        inputs_lib.to_model_range(padded)[None, None])))
  expected = reference_loop(
      flat_weights(pipe), torch.tensor(noise),
      torch.tensor(np.asarray(context)), torch.tensor(np.asarray(source)),
      ref, steps, sigma_min)
  assert result.latents.shape == (1, 3, 4, 6, 4)
  np.testing.assert_allclose(result.latents, expected.numpy(), atol=1e-4,
                             rtol=0)
  # The loop moved the latents (not a trivially passing comparison).
  assert np.abs(result.latents - noise).max() > 0.1
