"""The next-token task: language models on token blocks, perplexity and next-token accuracy beside the teacher's."""
from __future__ import annotations

from typing import Any

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.tasks.task import Prepared
from distillery.app.tasks.text_task import TextTask
from distillery.app.tasks.token_data import TokenData, check_vocabulary, prepare_token_data
from distillery.data.token_batches import TokenBatches
from distillery.engine import resolve_device
from distillery.engine.trainer import BestEpoch
from distillery.eval.perplexity import language_model_metrics
from distillery.models import count_parameters


class LanguageModelTask(TextTask):
    """Next-token prediction (``data.dataset: text``): a causal LM, its best epoch the lowest validation perplexity."""

    model_kind = "causal_lm"
    name = "language_model"
    kind_of_data = "next_token"
    best = BestEpoch("val/perplexity", higher_is_better=False)

    def load_data(self, config: RunConfig, tokenizer_path: str) -> TokenData:
        return prepare_token_data(config.data, tokenizer_path)

    def classes(self, data: TokenData, teacher_metadata: dict[str, Any]) -> int:
        """The vocabulary: the teacher's (its output rows), or the tokenizer's without one."""
        vocabulary = int(teacher_metadata["num_classes"]) if teacher_metadata else len(data.tokenizer)
        check_vocabulary(data, vocabulary, "the teacher" if teacher_metadata else "the model")
        return vocabulary

    def batches(self, dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> TokenBatches:
        return TokenBatches(dataset, batch_size, shuffle=shuffle, seed=seed)

    def data_metadata(self, data: TokenData) -> dict[str, Any]:
        return {"input_shape": [data.train.block_length]}

    def describe(self, prepared: Prepared) -> str:
        data = prepared.data
        return (f"{len(data.train)} training blocks of {data.train.block_length} tokens "
                f"({data.train.counted_tokens:,} counted), {len(data.test)} test blocks")

    def test_evaluation(self, config: RunConfig, prepared: Prepared, model: nn.Module,
                        teacher: nn.Module | None) -> dict[str, Any]:
        """Perplexity, cross-entropy and next-token accuracy on the test blocks, the teacher's beside them and the
        student's agreement with it."""
        device = resolve_device(config.device)
        batches = self.batches(prepared.data.test, config.train.batch_size)
        teacher = teacher.to(device) if teacher is not None else None
        evaluation = {"task": self.name, **language_model_metrics(model.to(device), batches, teacher=teacher,
                                                                 device=device),
                      "parameters": count_parameters(model)}
        if teacher is not None:
            evaluation["teacher"]["parameters"] = count_parameters(teacher)
        return evaluation
