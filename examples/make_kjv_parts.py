"""Write a real labelled text task from Debian's King James Bible (`make lm-data` installs `bible-kjv`): every
verse labelled by its part of the Bible (law, history, wisdom, prophets, gospels and acts, epistles, revelation),
with every fifth chapter of each book held out for testing, so test verses come from chapters never trained on.
Also trains a 2,000-token BPE tokenizer on the training verses.

    .venv/bin/python examples/make_kjv_parts.py          # own_data/kjv_parts/{train,test}.jsonl, tokenizer/
    .venv/bin/distillery train configs/kjv_parts_teacher.yaml
    .venv/bin/distillery distill configs/kjv_parts_distill.yaml
"""
import json
import re
import subprocess
from pathlib import Path

from distillery.data.tokenizer import train_tokenizer

PARTS = {
    "law": "Ge Exo Lev Num Deu",
    "history": "Josh Jdgs Ruth 1Sm 2Sm 1Ki 2Ki 1Chr 2Chr Ezra Neh Est",
    "wisdom": "Job Psa Prv Eccl SSol",
    "prophets": "Isa Jer Lam Eze Dan Hos Joel Amos Obad Jonah Mic Nahum Hab Zep Hag Zec Mal",
    "gospels and acts": "Mat Mark Luke John Acts",
    "epistles": "Rom 1Cor 2Cor Gal Eph Phi Col 1Th 2Th 1Tim 2Tim Titus Phmn Heb Jas 1Pet 2Pet 1Jn 2Jn 3Jn Jude",
    "revelation": "Rev",
}
PART_OF = {book: part for part, books in PARTS.items() for book in books.split()}
REFERENCE = re.compile(r"^(\w+?)(\d+):(\d+)$")


def verses():
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    for line in text.splitlines():
        reference, _, verse = line.partition(" ")
        match = REFERENCE.match(reference)
        if match and verse:
            yield match.group(1), int(match.group(2)), verse


if __name__ == "__main__":
    folder = Path("own_data") / "kjv_parts"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "test": []}
    for book, chapter, verse in verses():
        splits["test" if chapter % 5 == 0 else "train"].append({"text": verse, "label": PART_OF[book]})
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "train.txt").write_text("".join(row["text"] + "\n" for row in splits["train"]))
    train_tokenizer([folder / "train.txt"], 2000, folder / "tokenizer")
    print(f"{len(splits['train']):,} training and {len(splits['test']):,} test verses in {folder}")
