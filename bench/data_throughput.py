"""Decode + preprocess throughput of the data pipeline at 480p and 720p x 81.

  python bench/data_throughput.py [--clips=3] [--frames=81] [--mfu=0.4]

For each resolution it encodes a few synthetic clips (moving shapes on a
noisy texture, lossy H.264 like the real datasets), then measures, per clip
(source + target + reference image, the work of one training sample):

  kiwi_jax   `examples.DecodeExample` (frame-threaded PyAV decode of only the
             first 4k+1 frames, uint8 crop/resize, reference augmentation);
  reference  a re-statement of the reference loader's work (reference §6.3,
             `LoadVideo` + `ImageCropAndResize` in `unified_dataset.py`):
             every frame as a PIL image, resize + crop per frame, then the
             float conversion to [-1, 1] that its pipeline does on the host.
             (imageio and torchvision, which it calls, do not install here;
             the PIL/numpy work is the same.)

It prints clips per second of wall time, clips per CPU-second (= per core),
the ratio kiwi_jax / reference, and compares with what a training step
consumes: one clip per accelerator per micro-step, with the step time
estimated from the Wan2.2-5B DiT FLOPs at the given MFU on an H100 (spec
1.1 shapes; the estimate is printed with its assumptions, or pass
--step_seconds to use a measured step time instead).
"""

import argparse
import io
import pathlib
import sys
import time

import numpy as np
from PIL import Image

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from kiwi_jax.data import examples, mini_scene, records
from kiwi_jax.media import transforms, video_io

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
H100_BF16_FLOPS = 989e12


def synthetic_clip(height, width, frames, seed):
  """uint8[T, H, W, 3]: a RefVIE-mini scene plus sensor-like noise."""
  rng = np.random.default_rng(seed)
  scene = mini_scene.Scene(
    mini_scene.Texture("striped", ("gray", "beige"), 24, 3),
    (
      mini_scene.SceneObject(
        "circle", "red", height / 6, (height / 3, width / 3), (4.0, 7.0)
      ),
      mini_scene.SceneObject(
        "square", "blue", height / 7, (height / 2, width / 2), (-3.0, 5.0)
      ),
    ),
  )
  # Render at 1/4 size and upscale: full-size numpy masks are slow to draw.
  small, _ = mini_scene.render(scene, frames, height // 4, width // 4)
  clip = np.stack(
    [
      np.asarray(
        Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR)
      )
      for f in small
    ]
  )
  noise = rng.normal(0, 6, clip.shape[1:])
  return np.clip(clip + noise, 0, 255).astype(np.uint8)


def reference_style(record, max_frames, max_pixels):
  """The reference loader's per-sample work, restated with PIL/numpy."""
  out = []
  for field in ("src", "tgt"):
    frames = video_io.decode_video(record[field])  # Every frame.
    count = transforms.clip_length(len(frames), max_frames)
    images = [Image.fromarray(f) for f in frames[:count]]
    w, h = images[0].size
    th, tw = transforms.size_for_pixel_budget(h, w, max_pixels)
    scale = max(tw / w, th / h)
    size = (round(w * scale), round(h * scale))
    processed = []
    for image in images:
      image = image.resize(size, Image.Resampling.BILINEAR)
      left, top = (size[0] - tw) // 2, (size[1] - th) // 2
      image = image.crop((left, top, left + tw, top + th))
      processed.append(np.asarray(image, np.float32) / 127.5 - 1.0)
    out.append(np.stack(processed))
  ref = Image.open(io.BytesIO(record["ref_image"])).convert("RGB")
  ref = transforms.shrink_and_pad_centered(np.asarray(ref), th, tw, 0.85)
  out.append(ref.astype(np.float32) / 127.5 - 1.0)
  return out


def step_seconds_estimate(height, width, frames, mfu):
  """Wan2.2-TI2V-5B training step time for one clip, from FLOPs.

  Tokens: latent (T-1)/4+1 frames x H/16 x W/16, patch (1, 2, 2). FLOPs:
  6 x 5e9 x tokens for the weights (forward + backward), plus attention
  12 x tokens^2 x 3072 x 30 layers, plus one recomputed forward for remat
  (1/3 more). VAE and Qwen passes are left out, so this is an upper bound
  on the rate a step consumes.
  """
  h, w = transforms.size_for_pixel_budget(height, width, height * width)
  tokens = ((frames - 1) // 4 + 1) * (h // 32) * (w // 32)
  flops = 6 * 5e9 * tokens + 12 * tokens**2 * 3072 * 30
  flops *= 4 / 3
  return flops / (H100_BF16_FLOPS * mfu), tokens


def time_it(fn, items):
  wall, cpu = time.perf_counter(), time.process_time()
  for item in items:
    fn(item)
  return time.perf_counter() - wall, time.process_time() - cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clips", type=int, default=3)
  parser.add_argument("--frames", type=int, default=81)
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--step_seconds", type=float, default=None)
  args = parser.parse_args()
  for name, (height, width) in RESOLUTIONS.items():
    max_pixels = height * width
    raw = []
    for i in range(args.clips):
      clip = synthetic_clip(height, width, args.frames, i)
      data = video_io.encode_video(clip, crf=23)
      ref = video_io.encode_png(clip[0, : height // 2, : height // 2])
      raw.append(
        records.serialize(
          {
            "key": f"{name}-{i}",
            "prompt": "edit",
            "src": data,
            "src_kind": "video",
            "tgt": data,
            "tgt_kind": "video",
            "ref_image": ref,
            "has_ref": True,
            "num_frames": args.frames,
            "height": height,
            "width": width,
          }
        )
      )
    decode = examples.DecodeExample(
      examples.ExampleConfig(
        max_frames=args.frames, max_pixels=max_pixels, train=True
      )
    )
    rng = np.random.default_rng(0)
    ours = lambda r: decode.random_map(r, rng)
    ref_fn = lambda r: reference_style(
      records.deserialize(r), args.frames, max_pixels
    )
    ours(raw[0])  # Warm up codecs and allocators.
    wall, cpu = time_it(ours, raw)
    ref_wall, ref_cpu = time_it(ref_fn, raw)
    n = len(raw)
    step, tokens = step_seconds_estimate(height, width, args.frames, args.mfu)
    step = args.step_seconds or step
    need = 1.0 / step
    print(
      f"{name} x {args.frames} frames ({height}x{width}), {n} clips, "
      f"mp4 {len(records.deserialize(raw[0])['src']) / 1e6:.1f} MB"
    )
    print(
      f"  kiwi_jax : {n / wall:6.2f} clips/s wall, "
      f"{n / cpu:6.2f} clips per CPU-second (per core)"
    )
    print(
      f"  reference: {n / ref_wall:6.2f} clips/s wall, "
      f"{n / ref_cpu:6.2f} clips per CPU-second (per core)"
    )
    print(
      f"  ratio kiwi_jax/reference (per core): {(n / cpu) / (n / ref_cpu):.2f}x"
    )
    source = (
      "given"
      if args.step_seconds
      else (f"estimated: {tokens} DiT tokens, H100 bf16 at MFU {args.mfu}")
    )
    print(
      f"  a training step consumes 1 clip per accelerator every "
      f"{step:.2f} s ({source}) = {need:.2f} clips/s; one core feeds "
      f"{(n / cpu) / need:.1f} accelerators"
    )


if __name__ == "__main__":
  main()
