"""Write what the tiny language-model configs read: a 512-token BPE tokenizer trained on Genesis 1-11 (King James,
public domain, shipped in examples/data), in own_data/tiny_lm/tokenizer.

    .venv/bin/python examples/make_tiny_lm.py
    .venv/bin/distillery train configs/tiny_lm_teacher.yaml
    .venv/bin/distillery distill configs/tiny_lm_distill.yaml
    .venv/bin/distillery generate runs/tiny_lm/student --prompt "And God said"
"""
from pathlib import Path

from distillery.data.tokenizer import train_tokenizer

TEXT = Path(__file__).parent / "data" / "genesis_1-11.txt"

if __name__ == "__main__":
    folder = train_tokenizer([TEXT], 512, Path("own_data") / "tiny_lm" / "tokenizer")
    print(f"tokenizer written to {folder}")
