"""Packed against padded conversations: the same WordNet conversations (benchmarks/wordnet_chat.py builds them), the
same 6-block student cut from SmolLM2-135M-Instruct, one epoch on the glosses alone, one conversation a block against
several whole ones (data.pack). Reports blocks, steps, counted (assistant) tokens per second and wall time.

    OMP_NUM_THREADS=2 python benchmarks/packing.py [--out bench-out/packing] [--train-rows 600]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml
from language_models import config, run, smollm2
from wordnet_chat import build_sets

from distillery.data.conversations import chat_blocks, read_chat_rows
from distillery.data.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/packing"))
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--block-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-blocks", type=int, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2()
    train, test, _ = build_sets(args.out, args.train_rows, 32)
    tokenizer = load_tokenizer(gguf)
    rows = read_chat_rows(train)
    lines = [f"| conversations a block ({args.train_rows} conversations, blocks of {args.block_length} tokens) | "
             "blocks (before the validation tenth) | epoch time | assistant tokens/s | run's wall time |",
             "|---|---|---|---|---|"]
    for name, pack in (("one (padded)", False), ("several whole ones (packed)", True)):
        path = config(args.out, name, train, test, gguf, args, None, dataset="chat")
        document = yaml.safe_load(path.read_text())
        document["data"]["pack"] = pack
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        seconds, _ = run(path, "train")
        records = [json.loads(line) for line in (Path(document["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
        blocks = len(chat_blocks(rows, tokenizer, args.block_length, pack=pack))
        epoch = statistics.fmean(record["epoch_time_s"] for record in records)
        speed = statistics.fmean(record["train/tokens_per_s"] for record in records)
        lines.append(f"| {name} | {blocks} | {epoch:.0f} s | {speed:.0f} | {seconds:.0f} s |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
