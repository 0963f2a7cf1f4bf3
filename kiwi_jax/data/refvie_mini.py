"""RefVIE-mini: a procedural, exactly rendered stand-in for RefVIE.

Each sample is an edit quadruplet (source video, instruction, optional
reference image, target video) of moving shapes on a textured background,
covering RefVIE's edit types (reference §6.2):

  local_recolor         change one object's colour
  local_remove          remove one object
  local_add             add one object
  background_change     replace the background texture (described in words)
  subject_reference     replace an object by the one in the reference image
  background_reference  replace the background by the one in the reference

Samples are a pure function of (seed, index, config): no global RNG. Besides
the quadruplet, each sample carries the true edited region (`mask`, the
pixels that differ between source and target, exactly) so later stages can
score localisation (IoU) against it.

`write_dataset` writes the RefVIE layout (CSV + media, reference §6.1):
  <out>/refvie_mini_video.csv   iid,src_video,tgt_video,prompt (instructions)
  <out>/refvie_mini_ref.csv     iid,src_video,tgt_video,ref_image,prompt
  <out>/refvie_mini_image.csv   iid,src_video,tgt_video,prompt (1-frame edits)
  <out>/media/{src,tgt}/<key>.mp4|.png, <out>/media/ref/<key>.png
  <out>/masks/<key>.npy         bool[T, H, W] true edited region
  <out>/metadata.jsonl          key, edit type, prompt, paths, objects
The extra `iid` column (the sample key) is ignored by the reference's
loader and links records back to masks. Videos are lossless H.264
(libx264rgb, qp 0): decoding gives back the
rendered frames bit for bit.

Command line:
  python -m kiwi_jax.data.refvie_mini --out_dir=/tmp/refvie_mini \
      --num_videos=24 --num_images=8 --seed=0 [--records_dir=...]
"""

import argparse
import csv
import dataclasses
import io
import json
import sys

import numpy as np
from etils import epath

from kiwi_jax.data import mini_scene as ms
from kiwi_jax.media import video_io
from kiwi_jax.utils import atomic

EDIT_TYPES = (
  "local_recolor",
  "local_remove",
  "local_add",
  "background_change",
  "subject_reference",
  "background_reference",
)
REFERENCE_EDITS = ("subject_reference", "background_reference")
SCENES = ("textured", "simple")
# Where "simple" scenes put an added object, relative to its anchor object
# (the offset in units of the two objects' sizes, (dy, dx)).
BESIDE = {
  "to the left of": (0.0, -1.0),
  "to the right of": (0.0, 1.0),
  "above": (-1.0, 0.0),
  "below": (1.0, 0.0),
}


@dataclasses.dataclass(frozen=True)
class MiniConfig:
  """Sizes of the generated clips.

  Attributes:
    height, width: frame size; multiples of 32 keep clips valid model inputs
      without resizing (reference §4.5).
    num_frames: frames per video, 4k+1 (the Wan VAE's rule).
    ref_size: side of the square reference image.
    max_objects: objects per scene besides an added one (1 or more).
    fps: frame rate written in the mp4 container.
    scene: "textured" (default): two-colour scrolling textures, added
      objects anywhere with their own motion. "simple" (the CPU demo's):
      one-colour backgrounds, objects that never reach a border within
      the clip, and an added object placed beside an existing one, on the
      side the instruction names, moving with it. Every edit is then
      determined by the instruction (and reference) and the source, which
      a from-scratch DiT without absolute positions can learn.
  """

  height: int = 64
  width: int = 64
  num_frames: int = 5
  ref_size: int = 32
  max_objects: int = 2
  fps: int = 8
  scene: str = "textured"

  def __post_init__(self):
    if self.scene not in SCENES:
      raise ValueError(f"scene must be one of {SCENES}, got {self.scene!r}")
    if self.num_frames % 4 != 1:
      raise ValueError(f"num_frames must be 4k+1, got {self.num_frames}")
    if min(self.height, self.width) < 16:
      raise ValueError(
        f"frames must be >= 16 px, got {self.height}x{self.width}"
      )


@dataclasses.dataclass(frozen=True)
class EditSample:
  """One quadruplet and its ground truth.

  Attributes:
    key: stable id, e.g. "v000007".
    edit_type: one of EDIT_TYPES.
    prompt: the instruction.
    source, target: uint8[T, H, W, 3].
    ref_image: uint8[R, R, 3] for reference edits, else None.
    mask: bool[T, H, W], exactly the pixels where source != target.
    subject: description of the edited object ("" for background edits).
  """

  key: str
  edit_type: str
  prompt: str
  source: np.ndarray
  target: np.ndarray
  ref_image: np.ndarray | None
  mask: np.ndarray
  subject: str


def instruction_vocabulary() -> tuple[str, ...]:
  """Text covering every word RefVIE-mini's instructions use (object and
  background colours, shapes, textures, sides, the templates), e.g. to
  train a tiny tokenizer in which each becomes a token."""
  words = (
    list(ms.OBJECT_COLORS)
    + list(ms.TEXTURE_COLORS)
    + list(ms.SHAPES)
    + list(ms.TEXTURES)
  )
  return (
    " ".join(f" {w}" for w in words),
    " ".join(f" {side}" for side in BESIDE),
    "A red circle and a blue square on a teal background. "
    "Change the color of the to. Remove the. Add a moving across the "
    "scene. Make the background. Replace the background with a pattern. "
    "Replace the with the object in the reference image. Replace the "
    "background with the one in the reference image.",
  )


def _random_texture(rng, exclude_colors=(), simple=False) -> ms.Texture:
  names = [c for c in ms.TEXTURE_COLORS if c not in exclude_colors]
  if simple:
    color = str(rng.choice(names))
    return ms.Texture(kind="solid", colors=(color, color), period=1, scroll=0)
  colors = rng.choice(names, size=2, replace=False)
  return ms.Texture(
    kind=str(rng.choice(ms.TEXTURES)),
    colors=(str(colors[0]), str(colors[1])),
    period=int(rng.integers(4, 9)),
    scroll=int(rng.integers(0, 2)),
  )


def _random_object(rng, cfg: MiniConfig, color: str) -> ms.SceneObject:
  if cfg.scene == "simple":
    return _simple_object(rng, cfg, color)
  side = min(cfg.height, cfg.width)
  size = float(rng.uniform(0.12, 0.2) * side)
  return ms.SceneObject(
    shape=str(rng.choice(ms.SHAPES)),
    color=color,
    size=size,
    start=(
      float(rng.uniform(size, cfg.height - size)),
      float(rng.uniform(size, cfg.width - size)),
    ),
    velocity=(
      float(rng.uniform(-0.06, 0.06) * cfg.height),
      float(rng.uniform(-0.06, 0.06) * cfg.width),
    ),
  )


def _simple_object(rng, cfg: MiniConfig, color: str) -> ms.SceneObject:
  """An object whose whole path stays off the borders (no bounce)."""
  side = min(cfg.height, cfg.width)
  size = float(rng.uniform(0.14, 0.2) * side)
  travel = cfg.num_frames - 1
  velocity = (
    float(rng.uniform(-0.03, 0.03) * cfg.height),
    float(rng.uniform(-0.03, 0.03) * cfg.width),
  )
  # A diamond reaches 1.2 sizes from its centre; one pixel of margin more.
  reach = 1.2 * size + 1.0
  start = []
  for extent, v in zip((cfg.height, cfg.width), velocity):
    low = reach + max(0.0, -v * travel)
    high = extent - reach - max(0.0, v * travel)
    start.append(float(rng.uniform(low, max(low, high))))
  return ms.SceneObject(
    shape=str(rng.choice(ms.SHAPES)),
    color=color,
    size=size,
    start=(start[0], start[1]),
    velocity=velocity,
  )


def _beside(rng, cfg: MiniConfig, anchor: ms.SceneObject, color: str):
  """(new object, side) beside ``anchor``, moving with it, in the frame for
  the whole clip; None when no side has room."""
  size = float(rng.uniform(0.14, 0.2) * min(cfg.height, cfg.width))
  gap = anchor.size + size + 1.0
  travel = cfg.num_frames - 1
  sides = [str(s) for s in rng.permutation(list(BESIDE))]
  for side in sides:
    dy, dx = BESIDE[side]
    start = (anchor.start[0] + dy * gap, anchor.start[1] + dx * gap)
    ends = [(c, c + v * travel) for c, v in zip(start, anchor.velocity)]
    reach = 1.2 * size + 1.0
    inside = all(
      reach <= min(a, b) and max(a, b) <= extent - reach
      for (a, b), extent in zip(ends, (cfg.height, cfg.width))
    )
    if inside:
      return ms.SceneObject(
        shape=str(rng.choice(ms.SHAPES)),
        color=color,
        size=size,
        start=start,
        velocity=anchor.velocity,
      ), side
  return None


def _visible(labels: np.ndarray, index: int) -> np.ndarray:
  return labels == index + 1


def make_sample(
  seed: int,
  index: int,
  cfg: MiniConfig = MiniConfig(),
  edit_type: str | None = None,
  key_prefix: str = "v",
) -> EditSample:
  """Generates sample `index` of the stream `seed` (edit types cycle)."""
  edit_type = edit_type or EDIT_TYPES[index % len(EDIT_TYPES)]
  if edit_type not in EDIT_TYPES:
    raise ValueError(f"unknown edit type {edit_type!r}; expected {EDIT_TYPES}")
  rng = np.random.default_rng([seed, index, EDIT_TYPES.index(edit_type)])
  # Distinct colours for every object that appears in source or target.
  colors = [str(c) for c in rng.permutation(list(ms.OBJECT_COLORS))]
  simple = cfg.scene == "simple"
  count = int(rng.integers(1, cfg.max_objects + 1))
  objects = [_random_object(rng, cfg, colors[i]) for i in range(count)]
  texture = _random_texture(rng, simple=simple)
  spare_color = colors[count]  # unused by any scene object
  target_index = int(rng.integers(count))
  subject = objects[target_index]
  src_objects, tgt_objects = list(objects), list(objects)
  src_texture = tgt_texture = texture
  ref_image = None
  t, h, w = cfg.num_frames, cfg.height, cfg.width

  if edit_type == "local_recolor":
    tgt_objects[target_index] = dataclasses.replace(subject, color=spare_color)
    prompt = f"Change the color of the {subject.description} to {spare_color}."
  elif edit_type == "local_remove":
    del tgt_objects[target_index]
    prompt = f"Remove the {subject.description}."
  elif edit_type == "local_add" and simple:
    # Beside an existing object (redrawn until one side has room).
    placed = None
    while placed is None:
      anchor = objects[target_index]
      placed = _beside(rng, cfg, anchor, spare_color)
      if placed is None:
        anchor = _random_object(rng, cfg, anchor.color)
        objects[target_index] = anchor
    src_objects, tgt_objects = list(objects), list(objects)
    subject, side = placed
    tgt_objects.append(subject)
    prompt = f"Add a {subject.description} {side} the {anchor.description}."
  elif edit_type == "local_add":
    subject = _random_object(rng, cfg, spare_color)
    tgt_objects.append(subject)
    prompt = f"Add a {subject.description} moving across the scene."
  elif edit_type in ("background_change", "background_reference"):
    tgt_texture = _random_texture(
      rng, exclude_colors=texture.colors, simple=simple
    )
    if edit_type == "background_change" and simple:
      prompt = f"Make the background {tgt_texture.description}."
    elif edit_type == "background_change":
      prompt = (
        f"Replace the background with a {tgt_texture.description} pattern."
      )
    else:
      prompt = "Replace the background with the one in the reference image."
      ref_image = ms.render_texture(tgt_texture, cfg.ref_size, cfg.ref_size)
    subject = None
  else:  # subject_reference
    shapes = [s for s in ms.SHAPES if s != subject.shape]
    new = dataclasses.replace(
      subject, shape=str(rng.choice(shapes)), color=spare_color
    )
    tgt_objects[target_index] = new
    prompt = (
      f"Replace the {subject.description} with the object in the "
      "reference image."
    )
    ref_image = ms.render_object_on_white(new, cfg.ref_size)

  source, src_labels = ms.render(
    ms.Scene(src_texture, tuple(src_objects)), t, h, w
  )
  target, tgt_labels = ms.render(
    ms.Scene(tgt_texture, tuple(tgt_objects)), t, h, w
  )
  if subject is None:
    # Background edits change every background pixel (disjoint palettes).
    mask = (src_labels == 0) & (tgt_labels == 0)
  else:
    # The edited object's pixels in either video.
    src_i = src_objects.index(subject) if subject in src_objects else None
    tgt_i = (
      len(tgt_objects) - 1
      if edit_type == "local_add"
      else (target_index if edit_type != "local_remove" else None)
    )
    mask = np.zeros((t, h, w), bool)
    if src_i is not None:
      mask |= _visible(src_labels, src_i)
    if tgt_i is not None:
      mask |= _visible(tgt_labels, tgt_i)
  return EditSample(
    key=f"{key_prefix}{index:06d}",
    edit_type=edit_type,
    prompt=prompt,
    source=source,
    target=target,
    ref_image=ref_image,
    mask=mask,
    subject="" if subject is None else subject.description,
  )


def write_dataset(
  out_dir: str | epath.Path,
  *,
  num_videos: int,
  num_images: int = 0,
  seed: int = 0,
  cfg: MiniConfig = MiniConfig(),
  make=None,
) -> dict[str, epath.Path]:
  """Generates and writes RefVIE-mini in the RefVIE CSV + media layout.

  Image samples (1 frame, written as PNG) use the instruction-only edit
  types, like the reference's image stage. ``make`` replaces
  :func:`make_sample` (same signature; it is given no edit type), e.g.
  ``refvie_mini_captions.make_caption_sample``.

  Returns:
    The CSV paths by name: "video", "ref" and (if num_images) "image".
  """
  out = epath.Path(out_dir)
  for sub in ("media/src", "media/tgt", "media/ref", "masks"):
    (out / sub).mkdir(parents=True, exist_ok=True)
  tables = {"video": [], "ref": [], "image": []}
  meta_lines = []
  image_cfg = dataclasses.replace(cfg, num_frames=1)
  instruction_edits = [e for e in EDIT_TYPES if e not in REFERENCE_EDITS]
  jobs = [("video", i, cfg, None, "v") for i in range(num_videos)] + [
    ("image", i, image_cfg, instruction_edits[i % len(instruction_edits)], "i")
    for i in range(num_images)
  ]
  for table, index, sample_cfg, edit, prefix in jobs:
    if make is None:
      sample = make_sample(seed, index, sample_cfg, edit, prefix)
    else:
      sample = make(seed, index, sample_cfg, None, prefix)
    is_image = table == "image"
    ext = "png" if is_image else "mp4"
    paths = {
      "src_video": f"media/src/{sample.key}.{ext}",
      "tgt_video": f"media/tgt/{sample.key}.{ext}",
    }
    for column, frames in (
      ("src_video", sample.source),
      ("tgt_video", sample.target),
    ):
      data = (
        video_io.encode_png(frames[0])
        if is_image
        else video_io.encode_video(frames, fps=cfg.fps, lossless=True)
      )
      atomic.write_bytes(out / paths[column], data)
    if sample.ref_image is not None:
      paths["ref_image"] = f"media/ref/{sample.key}.png"
      atomic.write_bytes(
        out / paths["ref_image"], video_io.encode_png(sample.ref_image)
      )
      table = "ref"
    mask_buffer = io.BytesIO()
    np.save(mask_buffer, sample.mask)
    mask_path = f"masks/{sample.key}.npy"
    atomic.write_bytes(out / mask_path, mask_buffer.getvalue())
    tables[table].append({"iid": sample.key, **paths, "prompt": sample.prompt})
    meta_lines.append(
      json.dumps(
        {
          "key": sample.key,
          "edit_type": sample.edit_type,
          "prompt": sample.prompt,
          "subject": sample.subject,
          "mask": mask_path,
          **paths,
        }
      )
    )
  written = {}
  for name, rows in tables.items():
    if not rows and name == "image":
      continue
    columns = (
      ["iid", "src_video", "tgt_video"]
      + (["ref_image"] if name == "ref" else [])
      + ["prompt"]
    )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written[name] = out / f"refvie_mini_{name}.csv"
    atomic.write_bytes(written[name], text.getvalue().encode())
  atomic.write_bytes(
    out / "metadata.jsonl", ("\n".join(meta_lines) + "\n").encode()
  )
  return written


def load_mask(dataset_dir: str | epath.Path, key: str) -> np.ndarray:
  """The true edited region bool[T, H, W] of sample `key`."""
  data = (epath.Path(dataset_dir) / "masks" / f"{key}.npy").read_bytes()
  return np.load(io.BytesIO(data), allow_pickle=False)


def build_records(
  dataset_dir: str | epath.Path,
  records_dir: str | epath.Path,
  csvs: dict[str, epath.Path],
  *,
  cfg: MiniConfig = MiniConfig(),
  num_shards: int = 1,
) -> dict[str, epath.Path]:
  """Builds ArrayRecord shards for each CSV of `write_dataset` (fail policy).

  `cfg` must be the one the dataset was written with: every video must have
  exactly `cfg.num_frames` frames.

  Returns:
    {"video" | "ref" | "image": record directory}, ready for
    `pipeline.SourceSpec`.
  """
  # Imported on use: generating the dataset needs neither.
  # pylint: disable=g-import-not-at-top
  from kiwi_jax.data import metadata, record_builder

  out = {}
  for name, path in csvs.items():
    out[name] = epath.Path(records_dir) / name
    frames = 1 if name == "image" else cfg.num_frames
    record_builder.build_array_records(
      metadata.read_csv_rows(path),
      dataset_dir,
      out[name],
      options=record_builder.CheckOptions(min_frames=frames),
      policy="fail",
      num_shards=num_shards,
      prefix=f"refvie_mini_{name}",
    )
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m kiwi_jax.data.refvie_mini",
    description=__doc__.split("\n")[0],
  )
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--num_videos", type=int, default=24)
  parser.add_argument("--num_images", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--num_frames", type=int, default=5)
  parser.add_argument("--ref_size", type=int, default=32)
  parser.add_argument(
    "--records_dir",
    default=None,
    help="also build ArrayRecord shards here, one subdirectory per CSV",
  )
  args = parser.parse_args(argv)
  if args.records_dir:
    # Before any work: a records folder (replaced whole by its build) must
    # not hold or be the dataset it is built from.
    # pylint: disable=g-import-not-at-top
    from kiwi_jax.data import build_folder
    from kiwi_jax.utils import paths

    # pylint: enable=g-import-not-at-top
    folders = {
      f"--records_dir (its {name}/ folder)": epath.Path(args.records_dir) / name
      for name in ["video", "ref"] + (["image"] if args.num_images else [])
    }
    try:
      paths.refuse_inputs_as_outputs(
        outputs=folders.items(),
        inputs=[("--out_dir", args.out_dir)],
        folders=folders,
      )
      for flag, folder in folders.items():
        build_folder.check_output_folder(folder, flag)
    except ValueError as e:  # OutputIsInputError, OutputFolderError
      print(f"{parser.prog}: error: {e}", file=sys.stderr)
      return 2
  cfg = MiniConfig(
    height=args.height,
    width=args.width,
    num_frames=args.num_frames,
    ref_size=args.ref_size,
  )
  csvs = write_dataset(
    args.out_dir,
    num_videos=args.num_videos,
    num_images=args.num_images,
    seed=args.seed,
    cfg=cfg,
  )
  for _name, path in csvs.items():
    print(f"wrote {path}")
  if args.records_dir:
    for name, path in build_records(
      args.out_dir, args.records_dir, csvs, cfg=cfg
    ).items():
      print(f"{name}: records in {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
