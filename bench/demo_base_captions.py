"""How well a demo model draws caption clips (the tiny base's own task).

  python bench/demo_base_captions.py <train workdir of the base run> [--clips 8]

The base run (``python -m kiwi_jax.tasks.demo_base --workdir DIR``) keeps
its trainer workdir in ``DIR/base``: an ordinary Kiwi-Edit checkpoint. For
held-out caption clips (``refvie_mini_captions``, seed 99) it edits the
grey layout with the caption (10 Euler steps from noise) and prints each
caption with the PSNR to the true scene, then the mean; it writes
``<workdir>_captions.png`` (``layout | drawn | true`` rows, 4x) to look at
which words reached the frames.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kiwi_jax.data import refvie_mini  # noqa: E402
from kiwi_jax.data import refvie_mini_captions as captions  # noqa: E402
from kiwi_jax.media import compare, video_io  # noqa: E402
from kiwi_jax.pipeline.edit_pipeline import EditPipeline  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("checkpoint", help="the base run's trainer workdir")
  parser.add_argument("--clips", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--max_objects", type=int, default=2)
  args = parser.parse_args(argv)
  pipe = EditPipeline.from_pretrained(args.checkpoint)
  cfg = refvie_mini.MiniConfig(
    height=32, width=32, scene="simple", max_objects=args.max_objects
  )
  scores, rows = [], []
  for index in range(args.clips):
    sample = captions.make_caption_sample(99, index, cfg)
    drawn = pipe.edit(
      sample.source, sample.prompt, steps=args.steps, seed=0
    ).frames
    scores.append(compare.psnr(drawn, sample.target))
    print(f"{scores[-1]:6.2f} dB  {sample.prompt}")
    middle = len(drawn) // 2
    rows.append(
      np.concatenate(
        [sample.source[middle], drawn[middle], sample.target[middle]], 1
      )
    )
  print(f"mean {np.mean(scores):.2f} dB over {args.clips} caption clips")
  picture = np.concatenate(rows, 0).repeat(4, 0).repeat(4, 1)
  out = args.checkpoint.rstrip("/") + "_captions.png"
  with open(out, "wb") as f:
    f.write(video_io.encode_png(picture))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
