"""tf.data input pipelines: sources, tokenization, augmentation, per-host sharding, batching.

`create_data(config, process_index, process_count, pipeline=NAME)` returns the data object a task trains on,
built by the pipeline registered under NAME ("text_classification", "text_corpus", "images", or one a user
registers with `register_pipeline`). Its examples come from the source `config.data.source` names (built-in
ones in `input_pipeline/sources/`, or one a user registers with `register_source`). The data object yields
numpy batches for this host (`train_iterator(start_step)`, `eval_batches(split)`); the trainer assembles them
into global arrays.
"""

import ml_collections

from input_pipeline.registry import register_pipeline, register_source

__all__ = ["create_data", "register_pipeline", "register_source"]


def create_data(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1, *,
                pipeline: str):
    from input_pipeline import registry

    return registry.pipeline(pipeline)(config, process_index, process_count)
