"""`--mode=continuous_eval`: each new checkpoint of a training job evaluated once, beside it."""

import os
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError
from trainer.core.best_checkpoint import CANDIDATE_SUBDIR
from trainer.core.eval_report import report_path
from trainer.core.evaluation import Evaluator
from trainer.storage import checkpoints
from trainer.storage.checkpoints import BEST_SUBDIR


def _evaluate_checkpoint(
    evaluator: Evaluator, restore: Callable[[str], int], path: str, staging: str
) -> tuple[int, dict] | None:
    """(step, report) of the checkpoint `path`: the saved report, or a new evaluation of a staged copy.

    None when training deleted the checkpoint before it could be copied.
    """
    number = checkpoints.checkpoint_step(path)
    saved = evaluator.saved_report(number) if number is not None else None
    if saved is not None:
        logging.info(
            "%s was already evaluated (%s); not evaluating it again.", path, report_path(evaluator.model_dir, number)
        )
        return number, saved
    try:
        staged = checkpoints.copy_checkpoint(path, staging)
    except tf.errors.NotFoundError:
        logging.warning(
            "%s was deleted by the training job before it could be read (train.max_checkpoints_to_keep); going on "
            "with the next checkpoint.",
            path,
        )
        return None
    try:
        step = restore(staged)
        return step, evaluator.evaluate(step, checkpoint_path=path, export_best_from=staged)
    finally:
        tf.io.gfile.rmtree(staging)


def continuous_evaluate(
    evaluator: Evaluator,
    restore: Callable[[str], int],
    checkpoint_dir: str,
    final_step: int,
    timeout_secs: float,
) -> dict | None:
    """Evaluates each new checkpoint in `checkpoint_dir` once, as training writes them; stops after `final_step`.

    Safe beside the training job on the same model_dir: it reads `checkpoints/` and writes only `eval/` and
    `best/`. Each checkpoint is first copied to `best/.candidate/` and read from there, so training may
    delete it (train.max_checkpoints_to_keep) at any time. A checkpoint whose report is already in `eval/`
    (say, before this job was restarted) is not evaluated again. If training writes several checkpoints during
    one evaluation, the next one evaluated is the newest.

    Args:
      evaluator: evaluates the model the checkpoints are restored into.
      restore: restores a checkpoint prefix into that model; returns its step.
      checkpoint_dir: the training job's checkpoint directory.
      final_step: the step of the last checkpoint training writes (`train.steps`).
      timeout_secs: how long to wait for a new checkpoint before giving up (`evaluation.continuous_timeout_secs`).

    Returns:
      The report of the last checkpoint evaluated (or already reported), or None if none came.
    """
    if isinstance(evaluator.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise UserInputError(
            "--mode=continuous_eval: expected a single-host strategy (one_device, mirrored or tpu), received "
            "--strategy=multi_worker_mirrored. Run continuous evaluation as one job beside training: separate "
            "workers would each pick up checkpoints at different times."
        )
    staging = os.path.join(evaluator.model_dir, BEST_SUBDIR, CANDIDATE_SUBDIR)
    report = None
    logging.info(
        "Waiting for checkpoints in %s (up to %d s each) until step %d.", checkpoint_dir, timeout_secs, final_step
    )
    for path in tf.train.checkpoints_iterator(checkpoint_dir, timeout=timeout_secs):
        evaluated = _evaluate_checkpoint(evaluator, restore, path, staging)
        if evaluated is None:
            continue
        step, report = evaluated
        if step >= final_step:
            logging.info(
                "Evaluated the final checkpoint (step %d of %d); continuous evaluation is done.", step, final_step
            )
            return report
    logging.warning(
        "No new checkpoint in %s for %d s (evaluation.continuous_timeout_secs) before the final step %d; stopping.",
        checkpoint_dir,
        timeout_secs,
        final_step,
    )
    return report
