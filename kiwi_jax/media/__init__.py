"""Media: the one place for pixels, videos and comparisons.

  pixels      uint8 <-> [-1, 1] conversions, named after the reference path
              each follows (one truncates, one rounds)
  video_io    decode/encode with PyAV and Pillow (bytes and files), atomic
              mp4 writes
  transforms  the 4k+1 frame rule, pixel budget, resize/crop/pad variants
  compare     side_by_side panels and psnr

Atomic writes of files and folders are `kiwi_jax.utils.atomic`. Data,
pipeline, evaluation and training all import from here; the older module
names (`data.video_io`, `evaluators.video_io`, `utils.video_files`,
`data.transforms`) stay as thin re-exports.
"""
