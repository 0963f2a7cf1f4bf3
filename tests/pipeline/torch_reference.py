"""PyTorch restatement of the reference sampling loop, for tests and bench.

`WanVideoPipeline.__call__` with `FlowMatchScheduler(shift=5, sigma_min,
extra_one_step=True)` at inference (reference §5.1), written from docs/reference.md: the
timestep goes to the model in bf16, the source-injection sigma is the entry
nearest to it, the Euler step uses the exact sigmas and ends at 0. The
velocity model here is the toy editor (`tests.pipeline.toy_editor`)
restated in torch with the same weights.
"""

import numpy as np
import torch


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
  freqs = torch.tensor(
    np.power(10000.0, -np.arange(half, dtype=np.float64) / half).astype(
      np.float32
    )
  )
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
    v = torch_toy_velocity(
      w, z, t_model, scheduler.get_sigma(t_model), context, source, ref
    )
    z = scheduler.step(v, t, z)
  return z


def flat_weights(pipe):
  """The pipeline's parameters as torch tensors keyed 'a/b/kernel'."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  out = {}

  def walk(tree, prefix):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        out[f"{prefix}{k}"] = torch.tensor(np.asarray(v))

  walk(nnx.to_pure_dict(pipe.state), "")
  return out
