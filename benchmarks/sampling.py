"""On-policy sampling speed: the student's continuations with the key-value cache (transformers' generate) against
the whole block run again for every new token, on the same model, prompts and budget, greedy (so both write the same
tokens, which is checked).

    OMP_NUM_THREADS=2 python benchmarks/sampling.py [--layers 6] [--width 256] [--batch 8] [--new-tokens 64]

Prints sampled tokens per second for both (median of --repeats, interleaved) and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from distillery.data.batch import Batch
from distillery.methods.on_policy import _sample_with_cache, _sample_without_cache, prompt_lengths
from distillery.models import build_model


def student(layers: int, width: int, vocabulary: int, block: int) -> torch.nn.Module:
    config = {"model_type": "llama", "vocab_size": vocabulary, "hidden_size": width, "intermediate_size": 3 * width,
              "num_hidden_layers": layers, "num_attention_heads": max(1, width // 64), "num_key_value_heads": 1,
              "max_position_embeddings": block, "eos_token_id": None}  # no end of turn: every row its full budget
    torch.manual_seed(0)
    return build_model({"name": "causal_lm", "config": config}, (block,), vocabulary).eval()


def timed(sample, model, ids, starts, budget) -> tuple[float, torch.Tensor]:
    written = ids.clone()
    began = time.perf_counter()
    with torch.no_grad():
        sample(model, written, starts, budget, 0.0)
    return time.perf_counter() - began, written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocabulary", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    block = args.prompt + args.new_tokens
    model = student(args.layers, args.width, args.vocabulary, block)
    ids = torch.randint(0, args.vocabulary, (args.batch, block), generator=torch.Generator().manual_seed(1))
    starts = prompt_lengths(Batch({"input_ids": ids}, None, None, None), args.prompt)
    times: dict[str, list[float]] = {"cache": [], "no cache": []}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed touches both alike
        seconds, cached = timed(_sample_with_cache, model, ids, starts, args.new_tokens)
        times["cache"].append(seconds)
        seconds, uncached = timed(_sample_without_cache, model, ids, starts, args.new_tokens)
        times["no cache"].append(seconds)
    same = torch.equal(cached, uncached)
    tokens = args.batch * args.new_tokens
    print(f"llama {args.layers} blocks x {args.width}, vocabulary {args.vocabulary}, batch {args.batch}, prompt "
          f"{args.prompt}, {args.new_tokens} new tokens, greedy; threads {torch.get_num_threads()}; "
          f"same tokens: {same}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:>8}: {tokens / median:8.1f} sampled tokens/s (median of {len(measured)}: {median:.2f} s; "
              f"range {min(measured):.2f}-{max(measured):.2f} s)")
    ratio = statistics.median(times["no cache"]) / statistics.median(times["cache"])
    print(f"the cache samples {ratio:.1f}x as fast")


if __name__ == "__main__":
    main()
