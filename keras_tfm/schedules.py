"""Learning-rate schedules."""

import keras
from keras import ops

from keras_tfm._validation import check_positive_int, check_positive_number


@keras.saving.register_keras_serializable(package="keras_tfm")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The warm-up then inverse-square-root schedule of the Transformer.

    `lr = scale * model_dim^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)`:
    the rate grows linearly for `warmup_steps` updates, peaks at
    `scale * (model_dim * warmup_steps)^-0.5`, then decays with the inverse
    square root of the step. `step` counts updates from 1, as in the paper;
    Keras passes the optimizer's 0-based `iterations`, so the first update
    uses step 1 and never a zero learning rate.

    Args:
        model_dim: the model width `d_model`.
        warmup_steps: number of warm-up updates (4000 in the paper).
        scale: a constant factor on the whole schedule (1.0 in the paper).

    Example:

    >>> schedule = TransformerSchedule(model_dim=512, warmup_steps=4000)
    >>> round(float(schedule(3999)), 7)  # the peak, at step 4000
    0.0006988
    >>> optimizer = keras.optimizers.Adam(schedule, beta_2=0.98, epsilon=1e-9)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 5.3.
    """

    def __init__(self, model_dim, warmup_steps=4000, scale=1.0):
        check_positive_int("model_dim", model_dim)
        check_positive_int("warmup_steps", warmup_steps)
        check_positive_number("scale", scale)
        super().__init__()
        self.model_dim = model_dim
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        decay = ops.rsqrt(step)
        warmup = step * (float(self.warmup_steps) ** -1.5)
        factor = self.scale * float(self.model_dim) ** -0.5
        return factor * ops.minimum(decay, warmup)

    def get_config(self):
        return {
            "model_dim": self.model_dim,
            "warmup_steps": self.warmup_steps,
            "scale": self.scale,
        }
