"""Entry point: flags -> lm.run(config, workdir, mode).

  python main.py --config=configs/vision_classification.py:resnet_small,digits --workdir=/tmp/run  # offline
  python main.py --config=configs/vision_classification.py:resnet_small,digits --workdir=/tmp/run --mode=eval \
      --config.eval_split=validation
  python main.py --config=configs/bert_sentiment.py:files --workdir=/tmp/reviews \
      --config.init_from=/path/to/bert-base-uncased --config.data.train_files=reviews.csv \
      --config.data.text_field=review --config.data.label_field=sentiment
  python main.py --config=configs/bert_sentiment.py:files --workdir=/tmp/reviews --mode=export_hf \
      --config.export_dir=/tmp/reviews_hf   # the best checkpoint as a Hugging Face directory
  python main.py --config=configs/bert_pretrain.py:files --workdir=/tmp/vocab --mode=build_vocab \
      --config.data.train_files=corpus.txt   # learns /tmp/vocab/vocab.txt from the corpus
"""

import os
import sys

import lm
from lm import host_memory


def serving(argv: list[str]) -> bool:
    """Whether the command line asks for --mode=serve (read before absl parses it; as absl, the last --mode wins)."""
    mode = None
    for arg, following in zip(argv, [*argv[1:], ""]):
        name, equals, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "mode":
            mode = value if equals else following
    return mode == "serve"


# First, before TensorFlow and JAX start threads: freed host memory is kept for the next step, but not by
# default when serving (lm/host_memory.py; LM_MALLOC=system|reuse decides for any mode).
host_memory.keep_freed_memory(default="system" if serving(sys.argv) else "reuse")
lm.import_tensorflow_quietly()  # Before a config file or the pipeline imports it; LM_TF_LOGS=1 to see its logs.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lm import config_keys  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/bert_sentiment.py:base,imdb.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and metrics.")
flags.DEFINE_enum("mode", "train", lm.MODES, "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown `--config.KEY` or a missing config file reported in a few lines."""
    value = _config_argument(argv)
    path = (value or "").split(":", 1)[0]
    if path and not os.path.isfile(path):  # ml_collections would defer this error to the first use of the config.
        experiments = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
        sys.stderr.write(f"FATAL Flags parsing error: --config={value}: there is no file {path!r} (a relative path is "
                         f"read from the current directory, {os.getcwd()}). The experiments are the files of "
                         f"{experiments}, e.g. --config=configs/vision_classification.py:resnet_small,digits.\n")
        sys.exit(1)
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):  # How ml_collections reports an override of a key the config lacks.
        config = _config_alone(argv)
        key = config_keys.unknown_override(config, argv) if config is not None else None
        if key is None:
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {config_keys.message(config, key)}\n")
        sys.exit(1)


def _config_argument(argv: list[str]) -> str | None:
    """The value of the --config argument (`FILE.py:ARG`); None if there is none."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_alone(argv: list[str]):
    """The experiment config from the --config argument, without the overrides; None if there is none."""
    value = _config_argument(argv)
    return None if value is None else FLAGS["config"].parser.parse(value)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    lm.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, overrides=tuple(config_flags.get_override_values(FLAGS["config"])))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
