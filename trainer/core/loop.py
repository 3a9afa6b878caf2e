"""The compiled replica steps and the host loops that run many of them per `tf.function` call.

The inner step (what one replica does with one batch) is separate from the outer loop (how many steps run
per host round trip); the loops take the step count as a tensor, so changing it never retraces.
"""

from collections.abc import Callable, Iterator

import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.core import losses, metrics, optim, precision
from trainer.core.ema import ExponentialMovingAverage
from trainer.core.inference import InferenceConfig, predict_logits

TrainLoop = Callable[[Iterator, tf.Tensor], dict]
EvalLoop = Callable[[Iterator, tf.Tensor], tf.Tensor]

# Per-replica shares of the global-batch loss terms: summed over replicas they are the global values.
_LOSS_TERMS = ("cross_entropy", "l2_regularization")


def make_train_loop(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    global_step: tf.Variable,
    ignore_label: int,
    l2_weight_decay: float,
    jit_compile: bool = False,
    *,
    loss: losses.SegmentationLoss | None = None,
    gradient_accumulation_steps: int = 1,
    ema: ExponentialMovingAverage | None = None,
    summary_every: int = 0,
) -> TrainLoop:
    """Returns `train_loop(iterator, num_steps)`, which trains up to `num_steps` steps and returns loop statistics.

    Each step: the loss of the global batch (normalised by its contributing pixels, counted over all replicas),
    its gradient summed over `gradient_accumulation_steps` sequential micro-batches of each replica's batch and
    all-reduced, the optimizer update (clipping, learning-rate multipliers and loss scaling are the optimizer's),
    then the moving average `ema` if given. The loop stops early after a step whose loss or gradient norm is not
    finite, so the host can name that step.

    Args:
      strategy: the strategy the model and optimizer were built under.
      model: returns float32 logits [N, H, W, C].
      optimizer: a keras optimizer, a `LossScaleOptimizer` under mixed_float16.
      global_step: int64 step counter, incremented once per step.
      ignore_label: label value of pixels that contribute nothing.
      l2_weight_decay: coefficient of the L2 term over kernels added to the loss (SGD/Adam's weight decay); must
        be 0 with an optimizer that decays weights itself (AdamW).
      jit_compile: compiles each replica's forward and backward pass with XLA (what TPUs require; static shapes).
      loss: the per-pixel loss (class weights, label smoothing, hard-pixel mining); None builds
        `SegmentationLoss()` from its gin bindings (plain cross-entropy when there are none).
      gradient_accumulation_steps: k; each replica's batch is split into k micro-batches run one after the other,
        their gradients summed: the same update as the whole batch with 1/k of the activation memory (batch norm
        sees micro-batch statistics, as with any accumulation).
      ema: a moving average of the weights, updated after every step.
      summary_every: when > 0, the loop records `per_step/<name>` scalars into the default summary writer at every
        step that is a multiple of it (0: only the loop means the host writes).

    Returns:
      `train_loop(iterator, num_steps)` returning a dict of scalars: `loss`, `cross_entropy`,
      `l2_regularization`, `gradient_norm` (means over the steps run; the norm is the global one, before
      clipping), `learning_rate` (at the last step), `weight_norm` (after it), `loss_scale` (mixed_float16 only),
      and the bookkeeping `all_finite` (bool), `nonfinite_step` (int64 global step of the first non-finite step, -1
      if none) and `steps` (int32 steps run).

    Raises:
      UserInputError: inconsistent settings (accumulation steps, weight decay with AdamW, class weights).
    """
    if isinstance(gradient_accumulation_steps, bool) or not (
        isinstance(gradient_accumulation_steps, int) and gradient_accumulation_steps >= 1
    ):
        raise UserInputError(
            "gin binding train.gradient_accumulation_steps: expected a positive integer, received "
            f"{gradient_accumulation_steps!r}."
        )
    if l2_weight_decay and optim.decouples_weight_decay(optimizer):
        raise UserInputError(
            f"gin binding train.l2_weight_decay: expected 0 with optimizer.algorithm = 'adamw', received "
            f"{l2_weight_decay}; AdamW decays the weights itself (optimizer.weight_decay), an L2 term in the loss "
            "would decay them twice. Set train.l2_weight_decay = 0."
        )
    if summary_every < 0:
        raise UserInputError(f"gin binding train.summary_every: expected >= 0, received {summary_every!r}.")
    loss = loss or losses.SegmentationLoss()
    if getattr(model, "num_classes", None) is not None:
        loss.check_num_classes(model.num_classes)
    accumulation = gradient_accumulation_steps
    scales_loss = precision.uses_loss_scaling(optimizer)
    variables = model.trainable_variables

    def loss_and_gradients(
        images: tf.Tensor, labels: tf.Tensor, normalizer: tf.Tensor, decay_coefficient: tf.Tensor
    ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            cross_entropy = loss.loss_sum(labels, logits, ignore_label) / normalizer
            if l2_weight_decay:
                l2 = decay_coefficient * losses.l2_kernel_penalty(variables)
            else:
                l2 = tf.constant(0.0)
            total = cross_entropy + l2
            objective = optimizer.get_scaled_loss(total) if scales_loss else total
        gradients = tape.gradient(objective, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return {"cross_entropy": cross_entropy, "l2_regularization": l2}, gradients

    if jit_compile:
        # Only the model's forward and backward pass is compiled; the all-reduce and the optimizer update
        # stay outside, so the same step runs under every strategy.
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def accumulated_loss_and_gradients(
        images: tf.Tensor, labels: tf.Tensor, normalizer: tf.Tensor, decay_coefficient: tf.Tensor
    ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        batch = images.shape[0]
        if batch is not None and batch % accumulation:
            raise UserInputError(
                f"gin binding train.gradient_accumulation_steps: expected a divisor of the per-replica batch "
                f"({batch} = train.global_batch_size / {strategy.num_replicas_in_sync} replicas), received "
                f"{accumulation}."
            )
        micro_images = tf.reshape(images, tf.concat([[accumulation, -1], tf.shape(images)[1:]], 0))
        micro_labels = tf.reshape(labels, tf.concat([[accumulation, -1], tf.shape(labels)[1:]], 0))

        def body(index, terms, gradients):
            micro_terms, micro_gradients = loss_and_gradients(
                micro_images[index], micro_labels[index], normalizer, decay_coefficient
            )
            terms = {name: terms[name] + micro_terms[name] for name in _LOSS_TERMS}
            gradients = [a + b for a, b in zip(gradients, micro_gradients, strict=True)]
            return index + 1, terms, gradients

        initial = (
            tf.constant(0),
            {name: tf.constant(0.0) for name in _LOSS_TERMS},
            [tf.zeros_like(v) for v in variables],
        )
        # One micro-batch at a time (parallel_iterations=1): running them concurrently would bring back the
        # memory the accumulation exists to save.
        _, terms, gradients = tf.while_loop(
            lambda index, *_: index < accumulation, body, initial, parallel_iterations=1
        )
        return terms, gradients

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        replica_context = tf.distribute.get_replica_context()
        # The loss is normalised by the contributing pixels of the global batch, whatever the replica count.
        normalizer = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, loss.normalizer(labels, ignore_label))
        normalizer = tf.maximum(normalizer, 1.0)
        # Gradients are summed across replicas and micro-batches, so each carries its share of the penalty.
        decay_coefficient = tf.constant(
            l2_weight_decay / (replica_context.num_replicas_in_sync * accumulation), tf.float32
        )
        if accumulation == 1:
            terms, gradients = loss_and_gradients(images, labels, normalizer, decay_coefficient)
        else:
            terms, gradients = accumulated_loss_and_gradients(images, labels, normalizer, decay_coefficient)
        if scales_loss:
            gradients = optimizer.get_unscaled_gradients(gradients)
        gradients = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradient_norm = tf.linalg.global_norm(gradients)
        optimizer.apply_gradients(zip(gradients, variables, strict=True), skip_gradients_aggregation=True)
        if ema is not None:
            ema.update(global_step)
        # One vector, so the host-side reduction is a single collective (and MultiWorkerMirrored reduces tensors,
        # not dicts). The loss terms are this replica's shares; every replica has the same gradient norm.
        num_replicas = replica_context.num_replicas_in_sync
        return tf.stack([terms[name] for name in _LOSS_TERMS] + [gradient_norm / num_replicas])

    @tf.function
    def train_loop(iterator: Iterator, num_steps: tf.Tensor) -> dict:
        totals = {name: tf.constant(0.0) for name in ("loss", *_LOSS_TERMS, "gradient_norm")}
        all_finite = tf.constant(True)
        nonfinite_step = tf.constant(-1, tf.int64)
        steps = tf.constant(0)
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            per_replica_scalars = strategy.run(replica_step, args=(images, labels))
            scalars = tf.unstack(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_scalars, axis=None))
            terms = dict(zip(_LOSS_TERMS, scalars[:-1], strict=True))
            gradient_norm = scalars[-1]
            step_loss = tf.add_n([terms[name] for name in _LOSS_TERMS])
            global_step.assign_add(1)
            # Under loss scaling an overflowing gradient is expected now and then: the optimizer skips that
            # update and lowers the scale, so only the loss must stay finite.
            finite = tf.math.is_finite(step_loss)
            if not scales_loss:
                finite = tf.logical_and(finite, tf.math.is_finite(gradient_norm))
            if summary_every:
                step_scalars = {"loss": step_loss, **terms, "gradient_norm": gradient_norm}
                step_scalars["learning_rate"] = optimizer.learning_rate
                # An absolute name scope ("…/"): inside the loop body the tags would otherwise start with "while/".
                with tf.summary.record_if(tf.equal(global_step % summary_every, 0)), tf.name_scope("per_step/"):
                    for name, value in step_scalars.items():
                        tf.summary.scalar(name, value, step=global_step)
            totals = {
                "loss": totals["loss"] + step_loss,
                **{name: totals[name] + terms[name] for name in _LOSS_TERMS},
                "gradient_norm": totals["gradient_norm"] + gradient_norm,
            }
            steps += 1
            if not finite:
                all_finite = tf.constant(False)
                nonfinite_step = tf.identity(global_step.read_value())
                break
        count = tf.cast(tf.maximum(steps, 1), tf.float32)
        outputs = {name: total / count for name, total in totals.items()}
        outputs["learning_rate"] = tf.identity(optimizer.learning_rate)
        outputs["weight_norm"] = tf.linalg.global_norm(variables)
        if scales_loss:
            outputs["loss_scale"] = tf.cast(optimizer.loss_scale, tf.float32)
        outputs.update(all_finite=all_finite, nonfinite_step=nonfinite_step, steps=steps)
        return outputs

    return train_loop


def make_eval_loop(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    num_classes: int,
    ignore_label: int,
    inference_config: InferenceConfig | None = None,
) -> EvalLoop:
    """Returns `eval_loop(iterator, num_steps)`: the confusion matrix (int64) summed over replicas and batches.

    Each replica predicts its batch at the batch's own (padded) size as `inference_config` says (whole image by
    default; sliding window, multi-scale, flip), so labels are compared at their original resolution.
    """

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        logits = predict_logits(lambda x: model(x, training=False), images, num_classes, inference_config)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return metrics.confusion_matrix(labels, predictions, num_classes, ignore_label)

    @tf.function
    def eval_loop(iterator: Iterator, num_steps: tf.Tensor) -> tf.Tensor:
        matrix = tf.zeros([num_classes, num_classes], tf.int64)
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            per_replica_matrix = strategy.run(replica_step, args=(images, labels))
            matrix += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_matrix, axis=None)
        return matrix

    return eval_loop
