"""Dynamic masking for masked-LM pretraining (Devlin et al. 2019), inside the tf.data graph.

Each batch is masked afresh from a stateless seed (the config seed folded with the batch's index), so a
run that resumes at step k masks batch k exactly as an uninterrupted run does, and every evaluation masks
the validation text the same way. Of the tokens that are not special ([CLS], [SEP], [PAD]...), each is
selected with probability `mask_rate`; a selected token becomes [MASK] with probability 0.8, a random
token with 0.1, and stays itself with 0.1. With whole-word masking the draw is per word: a word piece
"##x" follows the fate of the piece that starts its word.

Outputs: `input_ids` (masked), `mlm_labels` (the original ids at every position) and `mlm_weights` (1.0
where a token was selected, else 0.0): the loss counts only the selected positions.
"""

import numpy as np
import tensorflow as tf

MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1


def mask_tokens(input_ids: tf.Tensor, seed: tf.Tensor, *, special_ids: np.ndarray, mask_id: int,
                vocab_size: int, mask_rate: float = 0.15, continuation: np.ndarray | None = None) -> dict:
    """Masks a [batch, length] int32 batch. `seed` is a stateless seed (int64 [2]).

    `special_ids` are never selected. `continuation` (bool [vocab_size]), when given, turns on whole-word
    masking: True marks a piece that continues the word before it.
    """
    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    select_seed, action_seed, random_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    shape = tf.shape(input_ids)
    maskable = tf.logical_not(tf.reduce_any(input_ids[..., None] == tf.constant(special_ids, tf.int32), -1))
    draw = tf.random.stateless_uniform(shape, select_seed)
    if continuation is not None:
        starts = tf.logical_not(tf.gather(tf.constant(continuation, tf.bool), input_ids))
        # The index of each piece's word within its row; a continuation takes its word's draw.
        word = tf.maximum(tf.cumsum(tf.cast(starts, tf.int32), axis=-1) - 1, 0)
        draw = tf.gather(draw, word, batch_dims=1)
    selected = tf.logical_and(maskable, draw < mask_rate)
    action = tf.random.stateless_uniform(shape, action_seed)
    random_ids = tf.random.stateless_uniform(shape, random_seed, minval=0, maxval=vocab_size, dtype=tf.int32)
    masked = tf.where(action < MASK_FRACTION, tf.fill(shape, mask_id),
                      tf.where(action < MASK_FRACTION + RANDOM_FRACTION, random_ids, input_ids))
    return {
        "input_ids": tf.where(selected, masked, input_ids),
        "mlm_labels": input_ids,
        "mlm_weights": tf.cast(selected, tf.float32),
    }


def batch_seed(base: tuple[int, int], index: tf.Tensor) -> tf.Tensor:
    """The stateless seed of the batch with this index in a stream whose base seed is `base`."""
    return tf.random.experimental.stateless_fold_in(tf.constant(base, tf.int64), tf.cast(index, tf.int64))
