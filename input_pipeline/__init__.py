"""tf.data input pipelines: sources, tokenization, augmentation, per-host sharding, batching.

`create_data(config, process_index, process_count, pipeline=NAME)` returns the data object a task trains on;
`lm.experiment` names the pipeline from the task and the model's modality (`lm.tasks.TaskSpec.pipelines`). It
yields numpy batches for this host; the trainer assembles them into global arrays.
"""

import ml_collections

PIPELINES = ("text_classification", "text_corpus", "images")


def create_data(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1, *,
                pipeline: str):
    if pipeline == "text_corpus":
        from input_pipeline import text_corpus

        return text_corpus.PretrainingData(config, process_index, process_count)
    if pipeline == "text_classification":
        from input_pipeline import text_classification

        return text_classification.TextClassificationData(config, process_index, process_count)
    if pipeline == "images":
        from input_pipeline import image_classification

        return image_classification.ImageClassificationData(config, process_index, process_count)
    raise ValueError(f"No input pipeline {pipeline!r}; known: {PIPELINES}.")
