"""Shared config defaults and the parser for config arguments.

A config file's `get_config(arg)` receives the text after the colon in
`--config=configs/FILE.py:ARG`: comma-separated words such as "base,smoke".
`parse_arg` turns it into a ConfigDict of named variants so each file reads
`variant.smoke`, `variant.size`, ... instead of parsing strings itself.
"""

import ml_collections

BERT_SIZES = {
    # name: (layers, hidden). Heads = hidden / 64, intermediate = 4 * hidden (Turc et al. 2019).
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


def bert_model_config(size: str, **extra) -> ml_collections.ConfigDict:
    """The `config.model` section of a BERT of `size` (a BERT_SIZES name) with `extra` keys added."""
    layers, hidden = BERT_SIZES[size]
    model = ml_collections.ConfigDict()
    model.name = "bert"
    model.vocab_size = 30522
    model.hidden_size = hidden
    model.num_layers = layers
    model.num_heads = hidden // 64
    model.intermediate_size = 4 * hidden
    model.max_position_embeddings = 512
    model.type_vocab_size = 2
    model.dropout_rate = 0.1
    model.attention_dropout_rate = 0.1
    model.layer_norm_eps = 1e-12
    # Compute dtype: float32 | bfloat16. bfloat16 is mixed precision: parameters, optimizer state, softmax,
    # LayerNorm statistics and the loss stay float32.
    model.dtype = "float32"
    model.remat = "none"  # none | full | dots_saveable: recompute each layer's activations in the backward pass.
    # Training on one CPU device: when a batch's real tokens fit in this fraction of its padded positions, the
    # per-token layers run on them only (lm.models.packing); 1.0: every position, always.
    model.unpad_fraction = 1.0
    model.head = "classifier"  # classifier (sequence classification) | mlm (masked-LM pretraining, task "mlm")
    model.update(extra)
    return model


def parse_arg(arg: str | None, **choices: tuple[str, ...]) -> ml_collections.ConfigDict:
    """Parses "w1,w2" into flags. Each keyword names a group of mutually exclusive words.

    `parse_arg("base,smoke", size=("mini", "base"), dataset=("imdb", "sst2"))` gives
    `{"size": "base", "dataset": <default>, "smoke": True}`. The first word of each group is its
    default; any word outside the groups must be a known flag ("smoke").
    """
    words = [w.strip() for w in (arg or "").split(",") if w.strip()]
    result = {name: options[0] for name, options in choices.items()}
    result["smoke"] = False
    for word in words:
        groups = [name for name, options in choices.items() if word in options]
        if groups:
            result[groups[0]] = word
        elif word == "smoke":
            result["smoke"] = True
        else:
            known = sorted({w for options in choices.values() for w in options} | {"smoke"})
            raise ValueError(f"Unknown config argument {word!r} in {arg!r}; known words: {', '.join(known)}.")
    return ml_collections.ConfigDict(result)


def mesh_config() -> ml_collections.ConfigDict:
    """Device mesh: sizes of the `data`, `fsdp` and `tensor` axes; -1 takes the remaining devices."""
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


# Logical parameter/activation axis -> mesh axis (or None = replicated). MaxText-style.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("classes", None),
    ("length", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
)


def serving_defaults() -> ml_collections.ConfigDict:
    """--mode=predict, select, export_savedmodel and serve (lm/serving/). The checkpoint is config.eval_checkpoint."""
    serving = ml_collections.ConfigDict()
    # predict/select: comma-separated CSV/TSV/JSONL/TXT files or globs (no label needed); for an image model, image
    # folders (every JPEG/PNG under them), image files or globs.
    serving.input_files = ""
    # predict/select JSONL; "" = WORKDIR/predictions.jsonl or WORKDIR/selection.jsonl. Checked (its directory created
    # if missing) when the mode starts, before the model loads.
    serving.output = ""
    serving.strategy = "least_confidence"  # select: least_confidence | margin | entropy.
    serving.top_k = 100  # select: how many of the most uncertain inputs to write.
    serving.exclude_files = ""  # select: files of ids already labelled (JSONL with "id", or one id a line).
    serving.label_studio = False  # select: also write the selection as Label Studio import tasks.
    serving.model_name = ""  # The name in /v1/models/<name> and in the export; "" = the workdir's folder name.
    # --mode=export_savedmodel writes <export_dir>/<step>/; "" = WORKDIR/savedmodel. Checked (created if missing; an
    # existing <step>/ is refused) when the mode starts, before the model loads.
    serving.export_dir = ""
    serving.host = "127.0.0.1"  # --mode=serve listens here; "0.0.0.0" for every interface.
    serving.port = 8501  # TF Serving's REST port.
    serving.max_batch_size = 32  # Instances per model batch; batches are padded to powers of two up to it.
    # Text batches cut to the run's data.bucket_lengths (serve compiles batch sizes x lengths at start-up);
    # False: every batch padded to max_length (one length: faster start-up, slower short requests).
    serving.length_buckets = True
    serving.max_wait_ms = 5.0  # A batch closes when full or when its first instance has waited this long...
    serving.close_when_idle = True  # ... or as soon as no other request is being read (no waiting for nobody).
    serving.max_queue = 1024  # Instances waiting at most; a request that does not fit gets 503.
    serving.max_body_bytes = 10 * 2**20  # Larger request bodies get 413.
    serving.max_instances = 256  # Instances per request at most; more get 413.
    # JSONL file that :feedback appends labelled examples to; "" turns feedback off. Checked (its directory created
    # if missing) when the server starts, before the model loads.
    serving.feedback_path = ""
    serving.drift_window = 1000  # Live predictions compared with the validation reference.
    serving.drift_threshold = 0.25  # PSI above this logs a warning.
    return serving


def training_defaults() -> ml_collections.ConfigDict:
    """Keys every experiment has: seed, steps, logging, checkpoints, optimizer, mesh."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.init_from = ""  # A Hugging Face directory or one of our workdirs/checkpoints.
    # Configs with two starting points hold both recipes in `recipes` ('scratch', 'finetune') and leave the keys
    # they set unset; at start 'auto' picks 'finetune' when init_from is set, else 'scratch' (lm/recipes.py).
    config.recipe = "auto"
    config.recipes = ml_collections.ConfigDict()  # Empty: the config has one recipe, its keys already set.
    config.global_batch_size = 32  # Examples per update (with grad_accum_steps > 1, over all micro-batches).
    # Micro-batches per update (gradient accumulation, lm/accumulation.py): the global batch is split into this many,
    # run one after another inside the step, and their gradients averaged. Must divide global_batch_size / (mesh
    # data x fsdp).
    config.grad_accum_steps = 1
    config.eval_batch_size = 64
    config.num_epochs = 1.0
    config.num_train_steps = -1  # > 0 overrides num_epochs.
    config.log_every = 50
    config.eval_every = -1  # -1: at the end of each epoch (and at the end of training).
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    config.best_metric = "accuracy"  # Eval metric that picks the best checkpoint; "" disables.
    config.best_mode = "max"
    config.label_smoothing = 0.0
    # A bad example in the user's files (an empty text, an unknown label, a row without a field, an image that
    # does not decode): 'error' stops before training with the file, the row and what is wrong; 'skip' leaves
    # it out, logs how many were skipped per split with the files, and trains on the rest.
    config.on_bad_example = "error"
    config.eval_splits_at_end = ("test",)
    config.eval_split = "test"  # --mode=eval evaluates this split.
    config.eval_checkpoint = "best"  # --mode=eval: best | latest | a step number.
    # --mode=export_hf writes the Hugging Face directory here; "" = WORKDIR/hf_export. Checked (created if missing)
    # when the mode starts, before the checkpoint is restored.
    config.export_dir = ""
    # What trains. "all"; "head": only the classification head (linear probing: 'classifier' for BERT, 'head' for
    # ResNet, VGG and ViT; the frozen backbone then runs in eval mode: no dropout, BatchNorm keeps its running
    # statistics); or a regular expression searched in each '/'-joined parameter path
    # ("encoder/layers/0/attention/query/kernel"): the parameters it finds train. Frozen parameters get no
    # gradient, no optimizer state and no weight decay: they stay bit-for-bit as loaded.
    config.trainable = "all"
    config.freeze = ""  # Regular expression: of the parameters `trainable` selects, those it finds are frozen.
    # A step whose loss or gradients are not finite is skipped (no update; counted in train/nonfinite_skips); this
    # many skipped steps in a row halt the run with an error.
    config.max_consecutive_nonfinite = 5
    # Test hooks, off by default (lm/step_log.py, lm/train.make_train_step). debug.step_log appends
    # "step loss sha256-of-batch" per step to WORKDIR/debug_steps.txt (reads the loss every step: a host sync).
    # debug.nan_steps makes the gradients NaN at these steps (1-based, as logged), to exercise the non-finite handling.
    config.debug = ml_collections.ConfigDict()
    config.debug.step_log = False
    config.debug.nan_steps = ()
    config.eval_at_start = False  # Evaluate the validation split before the first step (e.g. continued pretraining).
    # MFU is quoted against this (FLOP/s per device); 0: the datasheet peak of the device kind for config.model.dtype
    # (lm/hardware.py), or on a device kind not in that table (CPU) a matmul measured at start, labelled as such.
    config.peak_flops_per_device = 0.0
    # Pre-flight (lm/preflight.py): the compiled step's memory per device is checked against this many bytes before
    # step 1; 0: the device's own limit where it reports one (GPU, TPU), no check elsewhere (CPU).
    config.device_memory_limit_bytes = 0
    # On CPU: the kinds of work XLA hands to the YNNPACK library (lm/compiler.py). Convolutions and elementwise
    # fusions stay with XLA's own code, which is faster here; "xla_default" keeps XLA's choice, "" turns YNNPACK off.
    config.xla_cpu_ynn_fusions = "dot,reduce"
    # Multi-host: one process per host, all started with the same config. Each key left at its default falls back
    # to an environment variable: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. With no coordinator
    # address anywhere (and auto_detect off) the run is one process.
    config.distributed = ml_collections.ConfigDict()
    config.distributed.coordinator_address = ""  # "HOST:PORT" where process 0 serves the coordinator.
    config.distributed.num_processes = -1  # -1: from the environment.
    config.distributed.process_id = -1  # -1: from the environment; 0 .. num_processes - 1.
    config.distributed.auto_detect = False  # True: JAX finds all three (Cloud TPU pods, SLURM, Open MPI, Kubernetes).
    config.distributed.initialization_timeout_s = 300  # Every process must connect within this, else all fail.
    # A peer silent for this long (dead, killed, stopped) makes every process exit non-zero instead of hanging; the
    # processes that finish also wait at most this long for the others at exit.
    config.distributed.timeout_s = 100
    # What process 0 alone does while the others wait for it (an export's validation pass and write, a vocabulary,
    # a data report) must end within this, else the whole job stops (the others with a TimeoutError; its output
    # may be partial).
    config.distributed.process_zero_timeout_s = 3600

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"  # adamw | sgd | lamb (BERT at large batch) | lars (SimCLR at large batch)
    config.optimizer.learning_rate = 5e-5
    config.optimizer.schedule = "linear"  # linear | cosine | constant
    config.optimizer.warmup_fraction = 0.06
    config.optimizer.warmup_steps = -1  # >= 0 overrides warmup_fraction.
    config.optimizer.weight_decay = 0.01
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.trust_coefficient = 0.001  # lars: the trust ratio's coefficient (You et al. 2017).
    config.optimizer.clip_norm = 1.0  # <= 0 disables clipping.
    # Layer-wise learning-rate decay, BERT and ViT only (1 disables it): of L layers, layer i (0 = next to the
    # input) learns at lr * layer_decay**(L - i), the embeddings at lr * layer_decay**(L + 1), and the top
    # (BERT pooler and classifier, ViT final norm and head) at lr. Weight decay scales with it.
    config.optimizer.layer_decay = 1.0

    config.serving = serving_defaults()
    config.mesh = mesh_config()
    config.axis_rules = DEFAULT_AXIS_RULES
    return config
