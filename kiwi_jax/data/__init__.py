"""RefVIE-format data: record building, the Grain pipeline, RefVIE-mini.

Modules (import the one you need; nothing heavy is imported here):

  metadata        the reference's CSV formats and the RefVIE parquet chunks
  record_builder  per-row checks, problem report, ArrayRecord shards
  build_records   command line over record_builder / tfds_builder
  build_folder    a build's output folder: replaced whole, never mixed
  tfds_builder    the same data as a tfds dataset (ArrayRecord, no TF)
  records         the record serialisation and shard writing
  video_io        re-export of `kiwi_jax.media.video_io` (encode/decode)
  transforms      re-export of `kiwi_jax.media.transforms` (4k+1 frames,
                  pixel budget, crop, reference padding)
  examples        record -> example (decode, crop, augment, MLLM hook)
  pipeline        sources, process sharding, shuffle, mixing, iterators
  latent_cache    pre-encoded VAE latents read like media records
  refvie_mini     procedural edit quadruplets with exact ground truth
  mini_scene      the shapes-on-textures renderer behind refvie_mini
"""
