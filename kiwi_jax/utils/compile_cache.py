"""JAX's persistent compilation cache, set up by the trainer and the editor.

A restarted run (preemption, ``resume``, the next edit with the same
shapes) then loads its compiled programs from disk instead of compiling
them again: minutes per program at the released sizes.

Where the cache goes (:func:`resolve`), first match wins:

1. an explicit setting (``config.compile_cache_dir``, ``kiwi-edit
   --compile-cache-dir``, ``EditPipeline.from_pretrained(compile_cache_dir=)``):
   a local or ``gs://`` path, or ``"off"`` for no cache;
2. the environment variable ``JAX_COMPILATION_CACHE_DIR`` (JAX's own);
3. the caller's default: ``<workdir>/jax_cache`` for training (it lives and
   goes with the run, on the run's storage, so a fresh VM finds it), and
   :func:`user_cache_dir` (``~/.cache/kiwi_jax/jax_cache``) for editing.

Only programs that took at least ``jax_persistent_cache_min_compile_time_secs``
(JAX's default 1 s; its environment variable
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``) to compile are written:
the big train step, the MLLM encode, the denoising loop and the VAE
programs, not the many tiny helper programs. JAX keys entries by the
program, the devices, and the JAX/XLA versions, so a stale entry is never
used for a changed program.
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger("kiwi_jax")

ENV = "JAX_COMPILATION_CACHE_DIR"
OFF = ("off", "none", "false", "no", "0")
_turned_off = False  # by an "off" setting here, not by the user's JAX


def user_cache_dir() -> str:
  """``$XDG_CACHE_HOME/kiwi_jax/jax_cache`` (``~/.cache`` without it)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"
  )
  return os.path.join(base, "kiwi_jax", "jax_cache")


def resolve(
  setting: str | os.PathLike | None, default: str | None
) -> str | None:
  """The cache directory (None: no cache) from a setting, the
  environment and a default, in that order (see the module docstring)."""
  if setting is not None and str(setting).strip():
    setting = str(setting).strip()
    return None if setting.lower() in OFF else _expand(setting)
  env = os.environ.get(ENV, "").strip()
  if env:
    return _expand(env)
  return None if default is None else _expand(str(default))


def _expand(path: str) -> str:
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def configure(
  setting: str | os.PathLike | None = None,
  *,
  default: str | None = None,
  min_compile_secs: float | None = None,
  create: bool = True,
) -> str | None:
  """Points JAX's persistent compilation cache at :func:`resolve`'s
  directory (creating a local one) and returns it; None leaves the cache
  off. Process-wide, like every ``jax.config`` setting; a call with a new
  directory moves later compiles there.

  Args:
    setting: the explicit directory, ``"off"``, or None/"" for the
      environment or ``default``.
    default: the caller's directory when neither is given.
    min_compile_secs: when given, only programs compiling at least this
      long are written (otherwise JAX's threshold, 1 s by default).
    create: make a missing local directory; False for the processes of a
      multi-host run other than process 0, which JAX never lets write
      entries (they read what process 0 wrote).
  """
  global _turned_off
  path = resolve(setting, default)
  if path is None:
    if setting is not None and str(setting).strip():  # "off"
      jax.config.update("jax_enable_compilation_cache", False)
      _turned_off = True
      logger.info("Persistent compilation cache: off.")
    return None
  if not jax.config.jax_enable_compilation_cache:
    if not _turned_off:  # JAX_ENABLE_COMPILATION_CACHE=false: the user's
      logger.info(
        "Persistent compilation cache: off "
        "(jax_enable_compilation_cache is False)."
      )
      return None
    jax.config.update("jax_enable_compilation_cache", True)
    _turned_off = False
  if create and "://" not in path:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:  # a cache is a speed-up, never a reason to stop
      logger.warning(
        "Persistent compilation cache off: cannot create %s (%s).", path, e
      )
      return None
  if min_compile_secs is not None:
    jax.config.update(
      "jax_persistent_cache_min_compile_time_secs", float(min_compile_secs)
    )
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    # The cache object binds its directory when first used.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
  logger.info(
    "Persistent compilation cache: %s (programs compiling in at least %g s).",
    path,
    jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  return path


__all__ = ["ENV", "configure", "resolve", "user_cache_dir"]
