"""kiwi_jax: a JAX/Flax reimplementation of Kiwi-Edit.

`pip install .` installs the JAX library only. torch and the PyTorch
reference stack come with the `convert` extra (install torch==2.13.0 first,
see requirements.txt).
"""

import setuptools

CORE = [
  "jax>=0.10.2",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12.8",
  "grain>=0.2.18",
  "tensorflow-datasets>=4.9.10",
  "einops>=0.8",
  "ml_collections>=1.1.0",
  "numpy>=2.0",
  "ml_dtypes>=0.5",
  "pyarrow>=14",  # reading the released RefVIE parquet metadata
  "transformers>=5.0",  # tokenizer side only; no model classes are used
  "tokenizers>=0.22",
  "safetensors>=0.6",
  "av>=14",
  "pillow>=10",
  "etils[epath]>=1.10",
  "absl-py>=2.0",
  "tqdm",
  "pyyaml",
]

CONVERT = [
  "torch==2.13.0",
  "diffusers==0.42.1",
  "accelerate==1.15.0",
]

setuptools.setup(
  name="kiwi_jax",
  version="0.1.0",
  description="Kiwi-Edit (instruction and reference guided video editing) in JAX/Flax",
  python_requires=">=3.11",
  # Only the library is installed; train.py, eval.py, configs/ and
  # converters/ at the top of the repository are entry points over it.
  packages=setuptools.find_packages(include=["kiwi_jax", "kiwi_jax.*"]),
  install_requires=CORE,
  extras_require={
    "convert": CONVERT,
    "dev": CONVERT + ["pytest", "pytest-xdist"],
    # Compile-only TPU devices for `python -m kiwi_jax.plan` on any host
    # (and the runtime on a TPU VM): libtpu paired with the pinned jax.
    "tpu": ["jax[tpu]==0.10.2"],
    "tb": ["tensorboardX"],
    "wandb": ["wandb"],
    # The RefVIE construction pipeline on Beam runners. apache-beam 2.77
    # needs protobuf<7, pyarrow<26 and pillow<13, below this project's
    # pins, so install it into a separate environment
    # (see kiwi_jax/refvie/run_beam.py).
    "beam": ["apache-beam>=2.77"],
  },
  entry_points={
    "console_scripts": [
      "kiwi-edit = kiwi_jax.cli.edit:main",
      "kiwi-convert = kiwi_jax.converters.cli:main",
      "kiwi-eval = kiwi_jax.evaluators.cli:main",
    ]
  },
)
