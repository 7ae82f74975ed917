"""Tiny language models for tests: a byte-level BPE tokenizer trained on shipped text, and 2-block GPT-2 and
Llama-style models of a few hundred tokens, randomly initialised, saved like a user's pretrained model."""
from __future__ import annotations

from pathlib import Path

import torch

from distillery.data.tokenizer import train_tokenizer as train_bpe_tokenizer

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "genesis_1-11.txt"
VOCABULARY = 300


def train_tokenizer(folder: Path, vocabulary: int = VOCABULARY, text: Path = TEXT) -> Path:
    """A byte-level BPE tokenizer of ``vocabulary`` tokens trained on ``text``, saved in ``folder``."""
    return train_bpe_tokenizer([text], vocabulary, folder)


def tiny_config(family: str = "gpt2", layers: int = 2, width: int = 32, vocabulary: int = VOCABULARY) -> dict:
    """The config dict (with model_type) of a tiny causal LM of ``family`` (gpt2 or llama)."""
    if family == "gpt2":
        return {"model_type": "gpt2", "vocab_size": vocabulary, "n_embd": width, "n_layer": layers, "n_head": 2,
                "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # no dropout: steps recomputable
    return {"model_type": "llama", "vocab_size": vocabulary, "hidden_size": width, "intermediate_size": 2 * width,
            "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 128, "bos_token_id": 0, "eos_token_id": 0}


def save_pretrained_model(folder: Path, family: str = "gpt2", layers: int = 2, width: int = 32, seed: int = 0) -> Path:
    """A randomly initialised tiny causal LM saved with save_pretrained (safetensors) in ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**tiny_config(family, layers, width)))
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def lm_config(output_dir: Path, **sections) -> dict:
    """A run config of a 1-block GPT-2 on the shipped text in blocks of 32 tokens, 2 epochs; ``sections`` replace."""
    document = {"output_dir": str(output_dir),
                "data": {"dataset": "text", "path": str(TEXT), "block_length": 32, "train_limit": 96},
                "model": {"name": "causal_lm", "config": tiny_config("gpt2", layers=1, width=32)},
                "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3},
                "measure_latency": False, "progress": False}
    document.update(sections)
    return document
