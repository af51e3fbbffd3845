"""What a run is made from: the prompts and how they split into rounds, the principles, the exemplar pool and its
sampler, the validation set. Loaded and checked before any model loads (`RunInputs.load`), fingerprinted for resume
(`RunInputs.fingerprint`), and held against the model's context and the engine's once the tokenizer is known
(`RunInputs.fit_engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from datasets import Dataset

from .data import ValidationPair, check_prompt_column, load_validation_set
from .engines.choice import EngineChoice
from .models import peft_fingerprint
from .overlap import find_overlaps
from .prompting import (
    Exemplar,
    ExemplarSampler,
    Principles,
    PromptFormatter,
    check_lengths,
    load_exemplars,
    load_principles,
    model_context_length,
    prompt_bound,
)
from .sandbox import check_chat_template
from .state import run_fingerprint

CHAT_TEMPLATE_SAMPLE = 16  # the longest prompts, rendered through the chat template under the sandbox's bounds first


@dataclass
class RunInputs:
    prompts: Dataset  # the prompt dataset (`train_dataset`)
    column: str  # its prompt column
    round_indices: list[list[int]]  # the rows each round answers, round 1 first
    principles: Principles
    exemplars: list[Exemplar]
    sampler: ExemplarSampler
    validation_set: list[ValidationPair]
    mix: Callable[[list[list[int]]], list[list[int]]] = lambda rounds: rounds  # the aligned share of every round
    category_column: str | None = None  # what each prompt is (`principle_gate_column`): similar exemplars use it

    @classmethod
    def load(
        cls, settings, seed: int, train_dataset: Dataset | None, principles: Principles | None = None,
        exemplars: Sequence[Exemplar] | None = None, validation_set: Sequence[ValidationPair] | None = None,
    ) -> RunInputs:
        """The run's inputs from `settings` (a `SOFTSettings`), each argument given overriding its file."""
        if train_dataset is None:
            raise ValueError("`train_dataset` (the prompt dataset) is required: SOFT generates its data from prompts.")
        rounds, prompts = settings.rounds, settings.prompts
        check_prompt_column(train_dataset, rounds.prompt_column, rounds.num_rounds)
        pool = list(exemplars) if exemplars is not None else load_exemplars(prompts.exemplars_path)
        marks_column = settings.filters.gate_column
        if marks_column is not None and marks_column not in train_dataset.column_names:
            raise ValueError(
                f"`principle_gate_column={marks_column!r}` is not a column of the prompt dataset (columns: "
                f"{train_dataset.column_names}). Name the column that marks what each prompt calls for, or leave it "
                "unset."
            )
        marks = settings.aligned.marks(
            train_dataset[marks_column] if marks_column is not None else None, train_dataset[rounds.prompt_column]
        )

        def mix(rows: list[list[int]]) -> list[list[int]]:
            return settings.aligned.mix(rows, marks, seed)

        return cls(
            prompts=train_dataset,
            column=rounds.prompt_column,
            round_indices=mix(rounds.prompt_indices(len(train_dataset), seed)),
            principles=principles if principles is not None else load_principles(prompts.principles_path),
            exemplars=pool,
            sampler=ExemplarSampler(pool, prompts.num_exemplars, prompts.exemplar_sampling, seed),
            validation_set=list(validation_set) if validation_set is not None else load_validation_set(
                settings.validation.path
            ),
            mix=mix,
            category_column=marks_column,
        )

    def prompt_format(self, tokenizer, settings) -> tuple[PromptFormatter, Exemplar | None]:
        """The run's prompt formatter for `tokenizer`, and the exemplar shown in every engraving prompt (None for
        zero-shot engraving, `engraving_shots=0`)."""
        prompts = settings.prompts
        formatter = PromptFormatter(tokenizer, self.principles, prompts.prompt_format, prompts.use_internal_thoughts,
                                    settings.generation.stop_strings)
        if formatter.uses_chat:  # the template is rendered in-process from here on: first under the sandbox's bounds
            texts = sorted(self.prompts[self.column], key=lambda t: -len(str(t)))[:CHAT_TEMPLATE_SAMPLE]
            check_chat_template(tokenizer, [formatter.chat_messages(str(t), self.exemplars[:prompts.num_exemplars])
                                            for t in texts], "`model_name_or_path` (or `chat_template_path`)")
        return formatter, self.exemplars[0] if prompts.engraving_shots == 1 else None

    def placeholder(self, formatter: PromptFormatter, engraving_shot: Exemplar | None) -> Dataset:
        """SFTTrainer wants a training set at construction: the exemplar pool in engraving form stands in until the
        first round replaces it (it also fixes the dataset format, prompt-completion, for every round)."""
        return Dataset.from_list([formatter.engraving_example(e.prompt, e.response, engraving_shot)
                                  for e in self.exemplars])

    def round_prompts(self, index: int) -> tuple[list[int], list[str], list[list[Exemplar]]]:
        """Round `index`'s prompt rows, their texts and the exemplars drawn for each."""
        rows = self.round_indices[index - 1]
        column = self.prompts[self.column]  # read the column once, not once per prompt
        texts = [column[i] for i in rows]
        categories = self.column_values(self.category_column, rows) or [None] * len(rows)
        return rows, texts, [self.sampler.sample(index, i, text, None if c is None else str(c))
                             for i, text, c in zip(rows, texts, categories)]

    def column_values(self, column: str | None, rows: Sequence[int]) -> list[object] | None:
        """The values of `column` at `rows` (None without a column)."""
        if column is None:
            return None
        values = self.prompts[column]
        return [values[i] for i in rows]

    def check_overlap(self, evaluation: Sequence[tuple[str, str]], allow: bool) -> None:
        """Refuse training prompts that are evaluation items (`trl_soft.overlap`), unless `allow_eval_overlap`."""
        if allow:
            return
        found = find_overlaps(self.prompts[self.column], evaluation)
        if found:
            listed = "; ".join(f"{prompt[:70]!r} ~ {source} {item[:70]!r}" for prompt, source, item in found[:5])
            raise ValueError(
                f"{len(found)} training prompt(s) are evaluation items, so the evaluation would measure what the "
                f"rounds trained on: {listed}{' ...' if len(found) > 5 else ''}. Remove them from the prompts, or set "
                "`allow_eval_overlap=True` to train on them knowingly."
            )

    def fingerprint(self, settings, model, peft_config, kbit_config) -> dict[str, Any]:
        """What the run's weights depend on (`state.run_fingerprint`): a resume must match it."""
        return run_fingerprint(
            settings.fingerprint(), self.prompts[self.column], self.principles.render(), self.exemplars,
            self.validation_set, model, peft_fingerprint(peft_config, model),
            kbit_config.to_dict() if hasattr(kbit_config, "to_dict") else kbit_config,
        )

    def same_prompts(self, rounds, seed: int) -> Callable[[dict, int], bool]:
        """For a resume under other `num_rounds` / `prompts_per_round`: do the completed rounds keep their prompts?"""

        def same(old: dict, completed: int) -> bool:
            before = replace(rounds, num_rounds=old["num_rounds"], prompts_per_round=old["prompts_per_round"])
            return self.mix(before.prompt_indices(len(self.prompts), seed))[:completed] == self.round_indices[:completed]

        return same

    def fit_engine(
        self, choice: EngineChoice, settings, formatter: PromptFormatter, engraving_shot: Exemplar | None, model,
        max_length: int | None, behaviour_prompts: Sequence[str],
    ) -> EngineChoice:
        """Every round's prompts fit the model's context (and an explicit `vllm_max_model_len`) with their answers,
        and `max_length` holds every prompt with room for an answer: counted with the tokenizer and the model's config
        alone, so a prompt no round could use stops the run before any weights load. Returns `choice` with its
        `max_model_len` sized to the longest prompt the engine will answer (the rounds', the behaviour sets', the
        diagnostics samples'; the last two bounded, not counted one by one) plus its answer."""
        context = model_context_length(model)
        engine_limit = settings.engine.max_model_len if choice.backend == "vllm" else None
        longest = check_lengths(
            formatter, self.prompts[self.column], self.round_indices, self.sampler, max_length,
            settings.generation.max_new_tokens, context, engraving_shot, engine_limit,
        )
        diagnostics = [p.prompt for p in self.validation_set[: settings.diagnostics.num_prompts]]
        others = ((list(behaviour_prompts), settings.behaviour.max_new_tokens),
                  (diagnostics, settings.diagnostics.max_new_tokens))
        need = max([longest + settings.generation.max_new_tokens] + [
            prompt_bound(formatter, prompts, self.sampler.pool, self.sampler.k, engraving_shot) + new
            for prompts, new in others if prompts
        ])
        return choice.with_lengths(need, context, engine_limit)
