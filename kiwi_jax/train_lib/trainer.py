"""``train_and_evaluate``: the training loop around a :class:`Task`.

A task says *what* to train (model, loss, trainable set, data); this module
does the rest the same way for every model: mesh, sharded state, restore
order (see ``checkpointing``), the jitted step, metrics, non-finite checks,
checkpoints with the data iterator, preemption, profiling and sample/eval
hooks.

The config's trainer keys, their defaults and meanings are declared once in
``run_config.TrainerConfig``; the trainer parses them once at the start and
reads nothing else from the config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np
from etils import epath
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.train_lib import (
  checkpointing,
  metric_writers,
  optimizers,
  profiling,
  progress,
  run_config,
  train_step,
)
from kiwi_jax.train_lib.train_state import ModelSplit, TrainState
from kiwi_jax.utils import atomic, compile_cache

logger = logging.getLogger("kiwi_jax")


@runtime_checkable
class Task(Protocol):
  """What a model brings to the trainer.

  Required:
    trainable: regexes of the parameters that train (see ``train_state``).
    frozen: regexes that override ``trainable`` (may be empty).
    build_model(rngs): constructs the module (called under ``eval_shape``
      and inside a jitted, sharded initialiser; never eagerly at full size).
    loss_fn(model, batch, rng) -> (loss, aux): the training loss.
    train_iterator(shard_index, shard_count): a Grain iterator of
      process-local numpy batches (its state is checkpointed).

  Optional (looked up with ``getattr``):
    global_batch(host_batch, mesh): process-local batch -> global arrays
      (default ``sharding.host_to_global``; e.g. tokenise text fields first,
      or ``kiwi_jax.data.loader.to_global_batch``).
    batch_counts(batch) -> {"examples": n, "frames": n, "flops": n} for
      throughput and MFU (``flops``: the batch's model FLOPs, from
      ``kiwi_jax.flops``).
    flops_per_step: model FLOPs of every step, for tasks whose
      ``batch_counts`` gives none.
    sample(model, step, writer): writes sample edits (videos).
    evaluate(model, step) -> {name: value}: evaluation metrics.
    load_weights(path, split) -> (params, frozen): reads ``model_init``
      files that are not this trainer's checkpoints.
  """

  trainable: Sequence[str]
  frozen: Sequence[str]

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

  def loss_fn(
    self, model: nnx.Module, batch: Any, rng: jax.Array
  ) -> tuple[jax.Array, Any]: ...

  def train_iterator(self, shard_index: int, shard_count: int) -> Iterator: ...


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


NonFiniteStateError = checkpointing.NonFiniteStateError


class _FiniteGuard:
  """Checks the steps not yet checked in one fetch, and the state itself.

  Per step it keeps two device scalars the step already returns: the loss
  and the norm of the updated parameters (NaN or inf as soon as one
  parameter is). :meth:`check` fetches them together, at log and save
  steps only, so there is no host sync per step. When one is non-finite
  the latest state (the one of the last step added, not yet donated to the
  next step) is checked leaf by leaf on the devices to name the first bad
  leaf. ``checkpointing.save`` checks the whole state (optimiser moments
  and frozen weights too) before every save.
  """

  def __init__(self, first_step: int, manager: Any):
    self._pending: list[tuple[int, jax.Array, jax.Array]] = []
    self.last_checked = first_step
    self._manager = manager
    self._state: TrainState | None = None

  def add(
    self, step: int, metrics: dict[str, jax.Array], state: TrainState
  ) -> None:
    """Records step ``step``'s measurements and the state it produced."""
    loss = metrics["training_loss"]
    self._pending.append((step, loss, metrics.get("l2_params", loss)))
    self._state = state

  def check(self) -> None:
    """Raises if a pending step's loss or parameters went non-finite.

    Raises:
      NonFiniteLossError: a loss was NaN/inf (the step is named).
      NonFiniteStateError: the parameters went NaN/inf at a step whose
        loss, computed before the update, was still finite.
    """
    if not self._pending:
      return
    steps = [s for s, _, _ in self._pending]
    losses, norms = (
      np.asarray(x)
      for x in jax.device_get(
        (
          [loss for _, loss, _ in self._pending],
          [norm for _, _, norm in self._pending],
        )
      )
    )
    self._pending.clear()
    bad_loss = np.flatnonzero(~np.isfinite(losses))
    bad_norm = np.flatnonzero(~np.isfinite(norms))
    checked = f"steps {steps[0]}..{steps[-1]} checked"
    if bad_loss.size or bad_norm.size:
      leaves, count = checkpointing.nonfinite_leaves(self._state)
      in_state = (
        ""
        if not leaves
        else (
          f" In the state at step {steps[-1]}, "
          f"{checkpointing.describe_nonfinite(leaves, count)}."
        )
      )
      params_note = (
        ""
        if not bad_norm.size
        else (
          f" The parameters went non-finite at step {steps[bad_norm[0]]} "
          f"(l2_params={norms[bad_norm[0]]})."
        )
      )
      stop = f" Stopping; {checkpointing.newest_checkpoint_note(self._manager)}"
      if bad_loss.size:
        raise NonFiniteLossError(
          f"Non-finite training loss {losses[bad_loss[0]]} at step "
          f"{steps[bad_loss[0]]} ({checked}; the loss was finite up to "
          f"step {self.last_checked}).{params_note}{in_state}{stop}"
        )
      if leaves:
        raise checkpointing.NonFiniteStateError(
          f"The parameters went non-finite at step {steps[bad_norm[0]]} "
          f"(l2_params={norms[bad_norm[0]]}) although the loss, computed "
          f"before the update, was finite ({checked}).{in_state}{stop}"
        )
      logger.warning(
        "l2_params overflowed at step %d although every parameter is "
        "finite; the parameters are growing without bound.",
        steps[bad_norm[0]],
      )
    self.last_checked = steps[-1]


def _write_config(workdir: epath.Path, data: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  # Atomic; overwrites on restart.
  atomic.write_text(
    workdir / "config.json",
    json.dumps(data, indent=2, sort_keys=True, default=str),
  )


def _batch_counts(task: Task, batch: Any) -> dict[str, int]:
  counter = getattr(task, "batch_counts", None)
  if counter is not None:
    return dict(counter(batch))
  leading = jax.tree.leaves(batch)[0]
  return {"examples": int(np.shape(leading)[0]) * jax.process_count()}


def _run_hooks(
  task: Task,
  split: ModelSplit,
  state: TrainState,
  step: int,
  writer: Any,
  last: bool,
  sample_every: int,
  eval_every: int,
) -> None:
  """Sample edits and evaluation every N steps (and at the end)."""
  due = lambda every: every and (step % every == 0 or last)  # noqa: E731
  model = None
  if due(sample_every) and hasattr(task, "sample"):
    model = split.merge(state.params, state.frozen)
    task.sample(model, step, writer)
  if due(eval_every) and hasattr(task, "evaluate"):
    model = model or split.merge(state.params, state.frozen)
    writer.write_scalars(step, task.evaluate(model, step))


def _mesh_axes(run: run_config.TrainerConfig, task: Task) -> dict[str, int]:
  """The run's mesh axes, fitted to the task's global batch when
  ``fit_mesh_to_batch`` asks for it."""
  sizes = sharding.resolve_mesh_axes(run.mesh, jax.device_count())
  if not run.fit_mesh_to_batch:
    return sizes
  batch = getattr(task, "global_batch_size", None)
  if batch is None:
    raise run_config.ConfigError(
      f"fit_mesh_to_batch: the task {type(task).__name__} has no "
      "global_batch_size to fit the mesh to."
    )
  fitted = sharding.fit_batch_axes(sizes, int(batch))
  if fitted != sizes:
    logger.info(
      "Mesh %s fitted to global batch %d: %s (the spare batch devices "
      "shard the sequence).",
      sizes,
      batch,
      fitted,
    )
  return fitted


def train_and_evaluate(
  config: Any, workdir: str | epath.PathLike, task: Task
) -> TrainState:
  """Trains ``task`` as ``config`` says, writing to ``workdir``.

  Returns:
    The final train state.

  Raises:
    NonFiniteLossError: the loss became NaN/inf (the step is named).
    NonFiniteStateError: the state became NaN/inf (the step and the first
      non-finite leaf are named); it is never saved, so the newest
      checkpoint on disk is finite.
  """
  run = run_config.TrainerConfig.from_config(config)
  workdir = checkpointing.absolute_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  compile_cache.configure(
    run.compile_cache_dir,
    default=str(workdir / "jax_cache"),
    create=jax.process_index() == 0,
  )
  total_steps = run.total_steps
  mesh = sharding.make_mesh(_mesh_axes(run, task))
  rules = list(run.sharding_rules)
  logger.info("Mesh: %s", dict(zip(mesh.axis_names, mesh.axis_sizes)))

  writer = metric_writers.create_default_writer(
    workdir,
    tensorboard=run.tensorboard,
    wandb_project=run.wandb.project or None,
    wandb_name=run.wandb.name or None,
  )
  config_dict = run_config.as_dict(config)
  _write_config(workdir, config_dict)
  # What makes the workdir loadable as a model (e.g. Kiwi-Edit's config and
  # tokenizer beside checkpoints/), when the task has such files.
  write_model_files = getattr(task, "write_model_files", None)
  if write_model_files is not None and jax.process_index() == 0:
    write_model_files(workdir)
  writer.write_hparams(config_dict)

  optimizer = optimizers.make_optimizer(run.optimizer)
  precision = run.precision

  def model_ctor():
    return task.build_model(nnx.Rngs(run.seed))

  # Set-up may move host values to devices implicitly (optimiser init,
  # restores); train.py may forbid that with jax_transfer_guard, which
  # then still guards the training loop itself.
  with jax.transfer_guard("allow"):
    progress.note("Building the model abstractly and its shardings.")
    split = ModelSplit.build(
      model_ctor,
      task.trainable,
      task.frozen,
      mesh=mesh,
      rules=rules,
      precision=precision,
    )
    # Built once: the restore target, and the shardings of the initialised
    # state and of the step's output.
    abstract = train_step.abstract_train_state(split, optimizer, mesh)
    logger.info(
      "Trainable parameters: %d tensors, %d values",
      len(split.trainable_names()),
      sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(split.abstract_params)
      ),
    )

    data_iter = task.train_iterator(jax.process_index(), jax.process_count())
    manager = checkpointing.make_manager(
      workdir / "checkpoints", run.checkpoint
    )
    progress.note("Restoring or initialising the train state.")
    state, source = checkpointing.restore_or_initialize(
      manager,
      abstract,
      init_from_scratch=lambda: train_step.init_train_state(
        model_ctor,
        split,
        optimizer,
        precision,
        run.seed,
        mesh,
        rules,
        abstract=abstract,
      ),
      init_from_weights=lambda p, f: train_step.state_from_weights(
        p, f, split, optimizer, run.seed, mesh, abstract=abstract
      ),
      split=split,
      data_iter=data_iter,
      resume=run.resume or None,
      model_init=run.model_init or None,
      load_weights=getattr(task, "load_weights", None),
    )
    step = int(jax.device_get(state.step))
    progress.note(f"Starting at step {step} of {total_steps} from {source}.")

    step_fn = train_step.make_train_step(
      split,
      task.loss_fn,
      optimizer,
      run.optimizer,
      precision,
      mesh=mesh,
      rules=rules,
      abstract=abstract,
    )
    reporter = progress.ReportProgress(
      total_steps,
      num_chips=jax.device_count(),
      flops_per_step=getattr(task, "flops_per_step", None),
      peak_flops_per_chip=run.peak_flops_per_chip,
      first_step=step,
    )
    console = progress.ConsoleProgress(total_steps, first_step=step)
    profiler = profiling.Profiler.from_config(run.profile, workdir)
    guard = _FiniteGuard(step, manager)
    writer.discard_after(step)  # a restart redoes the steps after `step`
    sample_every, eval_every = run.sample_every, run.eval_every
    first_step = step
    to_global = getattr(task, "global_batch", sharding.host_to_global)

  if step >= total_steps:
    # A restart after the last checkpoint: redo the final sample/eval, which
    # the killed run may not have finished.
    with jax.transfer_guard("allow"):
      _run_hooks(
        task, split, state, step, writer, True, sample_every, eval_every
      )
  try:
    while step < total_steps:
      with reporter.timed("data"):
        host_batch = next(data_iter)
        counts = _batch_counts(task, host_batch)
        batch = to_global(host_batch, mesh)
      if step == first_step:
        progress.note("Compiling the train step (the first step is slow).")
      profiler.before_step(step, state)
      with profiling.step_annotation(step), reporter.timed("train_step"):
        state, metrics = step_fn(state, batch)
      profiler.after_step(step, state)
      step += 1
      guard.add(step, metrics, state)
      reporter.step_done(step, **counts)
      console.step_done()
      last = step == total_steps
      if (
        step % run.log_every == 0
        or last
        or step - first_step <= run.log_first_steps
      ):
        guard.check()
        writer.write_scalars(
          step, {**jax.device_get(metrics), **reporter.report(step)}
        )
        writer.flush()  # a killed run keeps what it logged
        console.log_step(step, metrics["training_loss"], reporter.last_report)
      preempted = manager.reached_preemption(step)
      if last or preempted or manager.should_save(step):
        guard.check()  # never save a state that went non-finite
        with reporter.timed("checkpoint"):
          checkpointing.save(
            manager, step, state, data_iter, force=last or preempted
          )
        if preempted:
          manager.wait_until_finished()
          progress.note(f"Preempted: saved step {step}; exiting.")
          break
      with jax.transfer_guard("allow"):  # task code, outside the hot loop
        _run_hooks(
          task, split, state, step, writer, last, sample_every, eval_every
        )
  finally:
    console.close()
    profiler.stop()
    manager.wait_until_finished()
    writer.flush()
  manager.close()
  writer.close()
  return state
