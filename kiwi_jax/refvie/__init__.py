"""RefVIE construction: instruction-edit pairs -> reference-guided quadruplets.

Kiwi-Edit's RefVIE set (reference §6.2, `index.html`) came out of four steps over a
pool of (source video, instruction, edited video) pairs: (1) quality
filtering, (2) instruction-aware grounding and segmentation of what changed,
(3) reference image synthesis for local and background edits, (4) semantic
verification and global de-duplication. The original code was not released;
this package provides it.

Each stage is a small class with a model-free default and a slot for a
learned model:

  quality.QualityFilter         slot: `learned_scorer(pair) -> float`
  grounding.DiffGrounder        slot: grounding.InstructionBoxGrounder
                                (an MLLM that boxes the named object)
  synthesis.ReferenceSynthesizer slot: `cleaner(image, holes, prompt)`
                                (a generative inpainter / image editor)
  verification.Verifier         slot: `embedder` (any image embedding)
  dedup                         perceptual hashes, global near-duplicates

`process.process_row` runs stages 1-4 (minus the global de-duplication) on
one pair and returns its provenance (`records.Outcome`); the single-machine
driver (`pipeline_local`, a process pool with a resumable output directory)
and the Apache Beam transforms (`pipeline_beam`, optional `apache-beam`) both
call it, then de-duplicate over the whole set and write the same outputs
(`records.finalize`). Command line: `python -m kiwi_jax.refvie --help`.
"""
