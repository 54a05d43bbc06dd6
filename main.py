"""Entry point: flags -> lm.run(config, workdir, mode).

  python main.py --config=configs/bert_sentiment.py:mini,smoke --workdir=/tmp/run --mode=train
  python main.py --config=configs/bert_sentiment.py:mini,smoke --workdir=/tmp/run --mode=eval \
      --config.eval_split=validation
  python main.py --config=configs/bert_sentiment.py:mini,smoke --workdir=/tmp/run --mode=export_hf \
      --config.export_dir=/tmp/run_hf   # the best checkpoint as a Hugging Face directory
  python main.py --config=configs/bert_pretrain.py:files --workdir=/tmp/vocab --mode=build_vocab \
      --config.data.train_files=corpus.txt   # learns /tmp/vocab/vocab.txt from the corpus
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import lm  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/bert_sentiment.py:base,imdb.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and metrics.")
flags.DEFINE_enum("mode", "train", lm.MODES, "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    lm.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, overrides=tuple(config_flags.get_override_values(FLAGS["config"])))


if __name__ == "__main__":
    app.run(main)
