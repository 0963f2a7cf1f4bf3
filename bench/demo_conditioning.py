"""How much a trained demo model's conditions depend on the instruction.

  python bench/demo_conditioning.py runs/demo/stage3 [--clips 6]

For held-out RefVIE-mini clips (the demo's own generator settings), the
checkpoint's ``EditPipeline`` encodes the MLLM conditions of the clip's
instruction and of variants that change one word (the new colour, the
edited object's colour) or the whole instruction (another edit type). It
prints the relative change of the DiT's context,
``|c(variant) - c(instruction)| / |c(instruction)|``, averaged over clips,
and the mean change of the edited frames (uint8 levels, one Euler step as
the demo samples) for the same variants.

A model that follows instructions must give a word change a context change
of the order of a template change; the demo's from-scratch model gives
about 1e-3 to 1e-2 of it (docs/demo_results.md), which is why its edits
ignore colours.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from kiwi_jax.data import mini_scene  # noqa: E402
from kiwi_jax.pipeline import programs  # noqa: E402
from kiwi_jax.pipeline.edit_pipeline import EditPipeline  # noqa: E402
from kiwi_jax.tasks import demo  # noqa: E402


def _context(pipe, prompt, sample):
  arrays, options = pipe.processor(
    prompt, frames=sample.source, ref_image=sample.ref_image
  )
  cond = programs.encode_conditions(
    pipe.graphdef,
    pipe.state,
    jax.tree.map(jnp.asarray, arrays),
    tuple(sorted(options.items())),
  )
  return np.asarray(cond.context, np.float64)


def _variants(sample) -> dict[str, str]:
  """One-word and whole-instruction variants of a recolour prompt."""
  color, shape = sample.subject.split()
  new = re.search(r"to (\w+)\.$", sample.prompt).group(1)
  other = next(c for c in mini_scene.OBJECT_COLORS if c not in (color, new))
  return {
    "new colour word": sample.prompt.replace(f"to {new}.", f"to {other}."),
    "object colour word": sample.prompt.replace(
      f"the {color} ", f"the {other} ", 1
    ),
    "another edit type": f"Remove the {color} {shape}.",
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("checkpoint", help="a demo stage-3 workdir")
  parser.add_argument("--clips", type=int, default=6)
  args = parser.parse_args(argv)
  pipe = EditPipeline.from_pretrained(args.checkpoint)
  config = demo_config.get_config("")
  config.unlock()
  config.demo.num_heldout = 6 * args.clips
  recolors = [
    s for s in demo.heldout_samples(config) if s.edit_type == "local_recolor"
  ][: args.clips]
  context_change, frame_change = {}, {}
  settings = dict(config.demo)
  for sample in recolors:
    base = _context(pipe, sample.prompt, sample)

    def edit(prompt, sample=sample):
      return pipe.edit(
        sample.source,
        prompt,
        steps=settings["sample_steps"],
        seed=0,
        max_frames=sample.source.shape[0],
        max_pixels=sample.source.shape[1] * sample.source.shape[2],
        denoising_strength=settings["denoising_strength"],
      ).frames.astype(np.float64)

    edited = edit(sample.prompt)
    for name, prompt in _variants(sample).items():
      other = _context(pipe, prompt, sample)
      context_change.setdefault(name, []).append(
        np.linalg.norm(other - base) / np.linalg.norm(base)
      )
      frame_change.setdefault(name, []).append(
        np.abs(edit(prompt) - edited).mean()
      )
  print(f"{len(recolors)} recolour clips of {args.checkpoint}")
  print("| variant | context change | edited-frame change (levels) |")
  print("| --- | --- | --- |")
  for name in context_change:
    print(
      f"| {name} | {np.mean(context_change[name]):.2e} | "
      f"{np.mean(frame_change[name]):.3f} |"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
