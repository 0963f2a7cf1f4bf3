"""The pipeline's denoising against a PyTorch restatement of the reference
loop (`WanVideoPipeline.__call__` + `FlowMatchScheduler`, reference §5.1), same
initial noise, fp32.

The velocity model is the toy editor restated in torch with the same
weights; the loop, schedule, bf16 timestep and nearest-entry sigma lookup
are the reference's, written here from docs/reference.md.
"""

import numpy as np
import pytest

from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import programs as stages

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from tests.pipeline.torch_reference import flat_weights, reference_loop  # noqa: E402


@pytest.mark.parametrize(
  "scheduler,sigma_min,steps,use_ref",
  [
    ("diffsynth", 0.0, 11, True),
    ("diffusers", 0.003 / 1.002, 7, False),
  ],
)
def test_pipeline_latents_match_reference_loop(
  toy_pipeline, sample, scheduler, sigma_min, steps, use_ref
):
  source_frames, ref_image, prompt = sample
  ref_image = ref_image if use_ref else None
  pipe = toy_pipeline
  clip = inputs_lib.load_source(source_frames)
  rng = np.random.default_rng(1)
  noise = rng.standard_normal((1, 3, 4, 6, 4)).astype(np.float32)
  result = pipe.edit(
    clip, prompt, ref_image, steps=steps, scheduler=scheduler, noise=noise
  )

  # The same conditions and source/reference latents, from the JAX stages.
  batch, _ = pipe.processor(prompt, frames=clip.frames, ref_image=ref_image)
  context = stages.encode_conditions(pipe.graphdef, pipe.state, batch).context
  source = stages.encode_video(
    pipe.graphdef, pipe.state, inputs_lib.to_model_range(clip.frames)[None]
  )
  ref = None
  if ref_image is not None:
    padded = inputs_lib.pad_reference(ref_image, *clip.size)
    ref = torch.tensor(
      np.asarray(
        stages.encode_video(
          pipe.graphdef,
          pipe.state,
          inputs_lib.to_model_range(padded)[None, None],
        )
      )
    )
  expected = reference_loop(
    flat_weights(pipe),
    torch.tensor(noise),
    torch.tensor(np.asarray(context)),
    torch.tensor(np.asarray(source)),
    ref,
    steps,
    sigma_min,
  )
  assert result.latents.shape == (1, 3, 4, 6, 4)
  print("max abs error", np.abs(result.latents - expected.numpy()).max())
  np.testing.assert_allclose(
    result.latents, expected.numpy(), atol=1e-4, rtol=0
  )
  # The loop moved the latents (not a trivially passing comparison).
  assert np.abs(result.latents - noise).max() > 0.1
