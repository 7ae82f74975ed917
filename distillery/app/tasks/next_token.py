"""The next-token task: language models on token blocks, perplexity and next-token accuracy beside the teacher's."""
from __future__ import annotations

from typing import Any

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.tasks.cached_teacher import AbsentTeacher, read_teacher_scores, write_teacher_scores
from distillery.app.tasks.task import Prepared
from distillery.app.tasks.text_task import TextTask
from distillery.app.tasks.token_data import TokenData, check_vocabulary, prepare_token_data
from distillery.data.token_batches import TokenBatches
from distillery.engine import resolve_device
from distillery.engine.trainer import BestEpoch
from distillery.eval.perplexity import language_model_metrics
from distillery.messages import note
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
        student's agreement with it. A teacher left unloaded (its targets all cached) is scored from the cache, where
        an earlier run or ``distillery cache`` left its scores, without agreement or KL (they need it live)."""
        device = resolve_device(config.device)
        batches = self.batches(prepared.data.test, config.train.batch_size)
        absent = isinstance(teacher, AbsentTeacher)
        live = teacher.to(device) if teacher is not None and not absent else None
        evaluation = {"task": self.name, **language_model_metrics(model.to(device), batches, teacher=live,
                                                                 device=device),
                      "parameters": count_parameters(model)}
        key, test = prepared.teacher_key, prepared.data.test
        if live is not None:
            evaluation["teacher"]["parameters"] = count_parameters(live)
            if key is not None:
                write_teacher_scores(key, test, evaluation["teacher"])
        elif absent:
            scores = read_teacher_scores(key, test) if key is not None else None
            why = ("its targets came from distill.teacher_logprobs" if config.distill.teacher_logprobs is not None
                   else "its targets are all cached")
            evaluation["teacher_note"] = (
                f"the teacher was not loaded ({why}): its test scores are "
                + ("read from the cache; agreement and KL from the teacher were skipped" if scores is not None
                   else "not cached (distillery cache with this config and a teacher caches them), so skipped"))
            note(evaluation["teacher_note"])
            if scores is not None:
                evaluation["teacher"] = scores
        return evaluation
