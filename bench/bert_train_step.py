"""Our jitted BERT train step against Hugging Face Flax and PyTorch eager: same model, batch and length.

The three contenders train the same BERT sequence classifier (vocab 30522, 512 positions, 2 classes,
float32, dropout 0.1 on hidden states and attention probabilities unless --no-dropout) with AdamW and
global-norm clipping at 1.0, on the same random batch:
  ours      lm.train.jit_train_step on a 1-device mesh, built as the trainer builds it (state donated)
  hf_flax   transformers.FlaxBertForSequenceClassification, a jax.jit step with an optax AdamW
            (params and optimizer state donated). Its attention dropout draws one [length, length] mask
            shared by all examples and heads (Flax's broadcast_dropout), far fewer random bits than ours
  torch     transformers.BertForSequenceClassification in eager mode, torch.optim.AdamW, one thread
            per core (OpenMP threads spin: with other processes on the cores its times balloon)
Each is compiled / warmed up first; then R rounds alternate the contenders, each round timing N steps.
A jitted 2048x2048 float32 matmul measured between rounds gives the peak that utilisation is quoted
against; FLOPs per step come from XLA's cost analysis of each JAX step (torch is credited with ours).
Every ratio is ours / theirs (< 1: ours faster); the timing loop and the table are bench/common.py's.

Usage (CPU, one JAX device):
  .venv/bin/python bench/bert_train_step.py --size mini --batch 32 --length 128
  .venv/bin/python bench/bert_train_step.py --size base --batch 8 --rounds 3 --steps 3 --json /tmp/base.json
"""

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # A CPU benchmark: torch runs on the CPU too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("USE_TF", "0")  # transformers: no TensorFlow models.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import configs.bert_sentiment  # noqa: E402
from configs import common as config_common  # noqa: E402
from lm import config_checks, optimizers, train  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py)

CONTENDERS = ("ours", "hf_flax", "torch")
NUM_CLASSES = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", choices=tuple(config_common.BERT_SIZES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender per round")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of "
                        + ",".join(CONTENDERS))
    parser.add_argument("--no-dropout", action="store_true", help="deterministic forward passes")
    parser.add_argument("--padding", type=float, default=0.0,
                        help="up to this fraction of each sequence is padding (random lengths; 0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the results to this path")
    args = parser.parse_args(argv)
    args.contenders = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    unknown = sorted(set(args.contenders) - set(CONTENDERS))
    if unknown or not args.contenders:
        parser.error(f"--contenders: unknown {unknown}; choose from {','.join(CONTENDERS)}.")
    if not 0.0 <= args.padding < 1.0:
        parser.error(f"--padding={args.padding} must be in [0, 1).")
    return args


def rerun_command(args: argparse.Namespace) -> str:
    words = [common.script_path(__file__), "--size", args.size, "--batch", str(args.batch), "--length",
             str(args.length), "--rounds", str(args.rounds), "--steps", str(args.steps), "--contenders",
             ",".join(args.contenders)]
    if args.no_dropout:
        words.append("--no-dropout")
    if args.padding:
        words += ["--padding", str(args.padding)]
    if args.json:
        words += ["--json", args.json]
    return common.rerun_command(words)


def model_config(args: argparse.Namespace):
    config = configs.bert_sentiment.get_config(args.size)
    config.model.num_classes = NUM_CLASSES
    config.global_batch_size = args.batch
    config.data.max_length = args.length
    config.num_train_steps = common.TOTAL_STEPS
    if args.no_dropout:
        config.model.dropout_rate = 0.0
        config.model.attention_dropout_rate = 0.0
    config.mesh.data = 1
    return config_checks.resolved_copy(config)


def host_batch(args: argparse.Namespace, vocab_size: int) -> dict[str, np.ndarray]:
    """Random ids and labels; with --padding, random lengths whose tails are masked out."""
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.length)
    input_ids = rng.integers(1, vocab_size, shape, dtype=np.int32)
    min_length = max(round(args.length * (1.0 - args.padding)), 1)
    lengths = rng.integers(min_length, args.length + 1, args.batch)
    attention_mask = (np.arange(args.length)[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = np.where(attention_mask == 1, input_ids, 0).astype(np.int32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros(shape, np.int32),
        "label": rng.integers(0, NUM_CLASSES, args.batch, dtype=np.int32),
    }


def analytic_flops(model, batch: int, length: int) -> float:
    """Matmul FLOPs of one train step (forward + backward = 3x forward), for a cross-check of XLA's count."""
    h, m, layers = model.hidden_size, model.intermediate_size, model.num_layers
    per_token_layer = 2 * (4 * h * h + 2 * h * m) + 2 * 2 * length * h  # projections, MLP, QK^T and PV
    head = 2 * (h * h + h * NUM_CLASSES)  # pooler and classifier, first token only
    return 3.0 * (batch * length * layers * per_token_layer + batch * head)


def hf_bert_config(model):
    import transformers

    return transformers.BertConfig(
        vocab_size=model.vocab_size, hidden_size=model.hidden_size, num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads, intermediate_size=model.intermediate_size,
        max_position_embeddings=model.max_position_embeddings, type_vocab_size=model.type_vocab_size,
        hidden_dropout_prob=model.dropout_rate, attention_probs_dropout_prob=model.attention_dropout_rate,
        layer_norm_eps=model.layer_norm_eps, hidden_act="gelu", num_labels=NUM_CLASSES,
    )


class HFFlax(common.Contender):
    name = "hf_flax"

    def __init__(self, config, batch: dict[str, np.ndarray], train_mode: bool):
        import transformers

        model = transformers.FlaxBertForSequenceClassification(
            hf_bert_config(config.model), input_shape=(1, 1), seed=config.seed
        )
        opt = config.optimizer
        schedule = optimizers.learning_rate_schedule(opt, common.TOTAL_STEPS)
        tx = optax.chain(
            optax.clip_by_global_norm(opt.clip_norm),
            optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                        mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)),
        )
        base_key = jax.random.key(config.seed)

        def train_step(params, opt_state, step, batch):
            dropout_rng = jax.random.fold_in(base_key, step)

            def loss_fn(params):
                logits = model(
                    batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], params=params,
                    dropout_rng=dropout_rng if train_mode else None, train=train_mode,
                ).logits
                return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, step + 1, loss

        self.params = jax.device_put(model.params)
        self.opt_state = jax.jit(tx.init)(self.params)
        self.step_count = jnp.zeros((), jnp.int32)
        self.batch = jax.device_put(batch)
        self.step = jax.jit(train_step, donate_argnums=(0, 1)).lower(
            self.params, self.opt_state, self.step_count, self.batch
        ).compile()
        self.flops = train.step_flops(self.step)
        self.last_loss = None

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.params, self.opt_state, self.step_count, self.last_loss = self.step(
                self.params, self.opt_state, self.step_count, self.batch
            )
        jax.block_until_ready((self.params, self.opt_state, self.last_loss))

    def loss(self) -> float:
        return float(self.last_loss)


class Torch(common.Contender):
    name = "torch"

    def __init__(self, config, batch: dict[str, np.ndarray], threads: int):
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.torch = torch
        self.model = transformers.BertForSequenceClassification(hf_bert_config(config.model))
        self.model.train()
        self.attn_implementation = self.model.config._attn_implementation
        opt = config.optimizer
        decay = [p for n, p in self.model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps,
        )
        self.clip_norm = opt.clip_norm
        self.inputs = {key: torch.from_numpy(batch[key]).long() for key in
                       ("input_ids", "attention_mask", "token_type_ids")}
        self.labels = torch.from_numpy(batch["label"]).long()
        self.last_loss = None

    def run(self, steps: int) -> None:
        for _ in range(steps):
            loss = self.model(**self.inputs, labels=self.labels).loss
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss = loss.detach()

    def loss(self) -> float:
        return float(self.last_loss)


def build(args: argparse.Namespace, config, batch: dict[str, np.ndarray]) -> dict[str, common.Contender]:
    threads = common.cores()

    def make(name: str) -> common.Contender:
        if name == "ours":
            return common.Ours(config, batch)
        if name == "hf_flax":
            return HFFlax(config, batch, train_mode=not args.no_dropout)
        return Torch(config, batch, threads)

    return common.build(args.contenders, make)


def summarize(args, config, contenders, timing: common.Timing) -> dict:
    rows = common.rows(contenders, timing, items_per_step=args.batch)
    if "torch" in contenders:
        rows["torch"]["attn_implementation"] = contenders["torch"].attn_implementation
    return {
        "command": rerun_command(args),
        "config": {"size": args.size, "layers": config.model.num_layers, "hidden": config.model.hidden_size,
                   "heads": config.model.num_heads, "intermediate": config.model.intermediate_size,
                   "batch": args.batch, "length": args.length, "rounds": args.rounds, "steps": args.steps,
                   "dropout": not args.no_dropout, "padding": args.padding},
        "environment": common.environment(),
        "matmul_peak_flops_per_second": timing.peak,
        "analytic_matmul_flops_per_step": analytic_flops(config.model, args.batch, args.length),
        "contenders": rows,
        "ratio_reading": common.RATIO_READING,
        "ratios": common.ratios(timing),
    }


def print_table(result: dict) -> None:
    c = result["config"]
    env = result["environment"]
    print(f"\nBERT-{c['size']} ({c['layers']} layers, hidden {c['hidden']}, {c['heads']} heads), batch {c['batch']}, "
          f"length {c['length']}, dropout {'on' if c['dropout'] else 'off'}, padding {c['padding']}, "
          f"{c['rounds']} rounds x {c['steps']} steps")
    print(f"matmul peak (2048^2 fp32, jitted): {result['matmul_peak_flops_per_second'] / 1e9:.1f} GFLOP/s; "
          f"analytic matmul FLOPs/step {result['analytic_matmul_flops_per_step'] / 1e9:.2f} G; "
          f"load average {env['load_average_after']:.1f} on {env['cpus']} CPUs")
    common.print_rows(result["contenders"], items="ex/s", digits=1)
    common.print_ratios(result["ratios"])
    print(f"\nrerun: {result['command']}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if "force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        print("warning: XLA_FLAGS fakes several host devices; this benchmark uses the first one only.")
    config = model_config(args)
    batch = host_batch(args, config.model.vocab_size)
    print(f"Building {', '.join(args.contenders)} (BERT-{args.size}, batch {args.batch}, length {args.length}) "
          f"on {jax.devices()[0]}", flush=True)
    contenders = build(args, config, batch)
    timing = common.measure(contenders, args.rounds, args.steps, digits=1)
    result = summarize(args, config, contenders, timing)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results: {args.json}")
    return result


if __name__ == "__main__":
    main()
