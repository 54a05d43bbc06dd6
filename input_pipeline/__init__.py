"""tf.data input pipelines: sources, tokenization, augmentation, per-host sharding, batching.

`create_data(config, process_index, process_count)` returns the data object a task trains on. It yields
numpy batches for this host; the trainer assembles them into global arrays.
"""

import ml_collections


def create_data(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1):
    if config.task == "mlm" and config.model.name == "bert":
        from input_pipeline import text_corpus

        return text_corpus.PretrainingData(config, process_index, process_count)
    if config.task == "classification" and config.model.name == "bert":
        from input_pipeline import text_classification

        return text_classification.TextClassificationData(config, process_index, process_count)
    if config.task in ("classification", "simclr") and config.model.name in ("resnet", "vgg", "vit"):
        from input_pipeline import image_classification

        return image_classification.ImageClassificationData(config, process_index, process_count)
    raise ValueError(
        f"No input pipeline for config.task={config.task!r} with config.model.name={config.model.name!r}."
    )
