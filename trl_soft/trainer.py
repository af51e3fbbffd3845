"""`SOFTTrainer`: TRL's `SFTTrainer` with the Step-On-Feet Tuning round loop.

`train()` runs every round in this one trainer object:

    regenerate (model of round t-1 answers a fresh chunk of prompts, principles + k exemplars per prompt)
    -> filter -> order (curriculum) -> fine-tune (engraving examples: no principles) -> validate -> save

Per round it writes `round_{t}/generations.jsonl`, `round_{t}/model/` and `round_{t}/metrics.json`, and updates the
run manifest `soft_state.json`, all atomically, so `train(resume_from_checkpoint=True)` continues after the last
completed round (and reuses a round's generations if they were written before an interruption).

Everything that is not the loop itself lives in its own module (prompting, generation, filters, curriculum,
evaluation, state); this file wires them together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import TrainOutput, get_last_checkpoint
from trl import SFTTrainer

from .behaviour.evaluate import format_premise
from .behaviour.run import BehaviourRun
from .behaviour.stats import ITEM_SCORES
from .callbacks import EarlyCollapseCallback, RoundControl, SOFTCallback
from .config import SOFTConfig
from .curriculum import SCORERS, Scorer, ScoringContext, check_scores, curriculum_order
from .data import ValidationPair, check_prompt_column, load_validation_set, split_rounds
from .diagnostics import collapse_diagnostics
from .distributed import is_main_process, wait_for_everyone
from .engines import (
    SYNC_METRIC,
    EngineChoice,
    EngineUnavailable,
    EngineWeights,
    GenerationEngine,
    HFEngine,
    MainProcessEngine,
    choose_engine,
    make_vllm_engine,
)
from .engines.choice import read_model_facts
from .evaluation import validation_nll_items
from .evaluation.benchmarks import BenchmarkSuite
from .filters import Candidate, FilterSettings, apply_filters
from .generation import GenerationResult, GenerationSettings
from .models import check_model_path, resolve_model_path
from .prompting import Exemplar, ExemplarSampler, Principles, PromptFormatter, load_exemplars, load_principles
from .quantization import check_kbit_supported, wants_kbit
from .reporting import behaviour_verdict, format_round_table, format_stop_line
from .sampler import DIFFICULTY_COLUMN, CurriculumSampler
from .state import (
    SOFTState,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    config_hash,
    read_jsonl,
    round_paths,
)

CITATION = """\
@article{wang2024soft,
    title   = {{Step-On-Feet Tuning: Scaling Self-Alignment of LLMs via Bootstrapping}},
    author  = {Haoyu Wang and Guozheng Ma and Ziqiao Meng and Zeyu Qin and Li Shen and Zhong Zhang and Bingzhe Wu
               and Liu Liu and Yatao Bian and Tingyang Xu and Xueqian Wang and Peilin Zhao},
    journal = {arXiv preprint arXiv:2402.07610},
    year    = 2024
}"""


class SOFTRoundError(RuntimeError):
    """A round cannot go on (e.g. every generated answer was filtered out); earlier rounds stay on disk."""


class SOFTPremiseError(RuntimeError):
    """`require_premise=True` and the premise check did not hold: nothing was trained."""


class SOFTTrainer(SFTTrainer):
    """Step-On-Feet Tuning: multi-round self-alignment by bootstrapping, as a drop-in `SFTTrainer`.

    Args:
        model: as for `SFTTrainer` (hub id, local folder, `"embedded"`, a model or a `PeftModel`).
        args: a [`SOFTConfig`].
        train_dataset: the **prompt** dataset: a `Dataset` with a text column `args.prompt_column`. The training
            examples of each round are generated from it.
        principles, exemplars, validation_set: override the files named in `args` (default: the shipped assets).
        difficulty_scorer: with `args.curriculum='custom'`, a callable `(prompts, responses, context) -> scores`
            (higher = harder; `context` is a `trl_soft.curriculum.ScoringContext`) that orders each round's data.
        callbacks: as for `SFTTrainer`; `SOFTCallback`s also get the round events. Unless one is given, an
            `EarlyCollapseCallback` is added from the `collapse_*` fields of `args`.
        Everything else is passed to `SFTTrainer`.
    """

    _tag_names = ["trl", "sft", "soft", "self-alignment"]
    _name = "SOFT"
    _paper = {
        "title": "Step-On-Feet Tuning: Scaling Self-Alignment of LLMs via Bootstrapping",
        "id": "2402.07610",
        "citation": CITATION,
    }

    def __init__(
        self,
        model,
        args: SOFTConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        callbacks: list[TrainerCallback] | None = None,
        peft_config=None,
        quantization_config=None,
        principles: Principles | None = None,
        exemplars: Sequence[Exemplar] | None = None,
        validation_set: Sequence[ValidationPair] | None = None,
        difficulty_scorer: Scorer | None = None,
        **kwargs,
    ):
        if args is None:
            args = SOFTConfig(output_dir="soft-output")
        if not isinstance(args, SOFTConfig):
            raise TypeError(f"`args` must be a SOFTConfig (got {type(args).__name__}); SOFT needs its round settings.")
        if train_dataset is None:
            raise ValueError("`train_dataset` (the prompt dataset) is required: SOFT generates its data from prompts.")
        if "formatting_func" in kwargs:
            raise ValueError("`formatting_func` is not supported: SOFT builds each round's training examples itself.")

        # Everything that can be wrong with the inputs is checked here, before any model is loaded.
        check_prompt_column(train_dataset, args.prompt_column, args.num_rounds)
        self.round_prompt_indices = split_rounds(
            len(train_dataset), args.num_rounds, args.prompts_per_round, args.prompt_schedule, args.seed
        )
        self.principles = principles if principles is not None else load_principles(args.principles_path)
        self.exemplars = list(exemplars) if exemplars is not None else load_exemplars(args.exemplars_path)
        self.exemplar_sampler = ExemplarSampler(self.exemplars, args.num_exemplars, args.exemplar_sampling, args.seed)
        self.validation_set = (
            list(validation_set) if validation_set is not None else load_validation_set(args.validation_path)
        )
        self.benchmark_suite = BenchmarkSuite.load(args.benchmarks, args.benchmark_data_dir, args.benchmark_limit)
        self.behaviour = BehaviourRun(
            args.behaviour_settings,
            args.judge_settings,
            Path(args.output_dir),
            gate="principle_gate" in args.active_filters,
            gate_column=args.principle_gate_column,
            gate_values=args.principle_gate_values,
            prompt_columns=train_dataset.column_names,
        )
        self.difficulty_scorer = self._check_curriculum(args, train_dataset, difficulty_scorer)
        callbacks = self._soft_callbacks(args, callbacks)
        if isinstance(model, str):
            check_model_path(model)
        kbit_config = quantization_config or (args.model_init_kwargs or {}).get("quantization_config")
        check_kbit_supported(kbit_config, peft_config, model)
        self.prompt_dataset = train_dataset
        self.soft_output_dir = Path(args.output_dir)
        self.soft_config_hash = self._config_hash(args, model)
        self._check_output_dir(args)
        if isinstance(model, str):
            model = resolve_model_path(model)  # converts the embedded model on first use: after every check
        self.engine_choice = self._choose_engine(args, model, peft_config, wants_kbit(kbit_config))

        if processing_class is None:
            source = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(source)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.formatter = PromptFormatter(
            processing_class,
            self.principles,
            args.prompt_format,
            args.use_internal_thoughts,
            args.generation_stop_strings,
        )
        self.engraving_shot = self.exemplars[0] if args.engraving_shots == 1 else None
        self.behaviour.attach(
            self.formatter,
            lambda position: self.exemplar_sampler.sample(0, position),  # round 0: no round's prompts use it
            self.engraving_shot,
            args.generation_batch_size,
            args.seed,
        )

        # SFTTrainer wants a training set at construction; the exemplar pool in engraving form stands in until the
        # first round replaces it (it also fixes the dataset format, prompt-completion, for every round).
        placeholder = Dataset.from_list(
            [self.formatter.engraving_example(e.prompt, e.response, self.engraving_shot) for e in self.exemplars]
        )
        super().__init__(
            model=model,
            args=args,
            train_dataset=placeholder,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            peft_config=peft_config,
            quantization_config=quantization_config,
            **kwargs,
        )
        self.soft_state: SOFTState | None = None
        self._engine: GenerationEngine | None = None
        # What the engine must generate with: the starting model, then every round as it is saved or reloaded.
        self._engine_weights = EngineWeights(base=self.engine_choice.base or "")
        self._engine_sync_seconds = 0.0  # running total of weight hand-overs to the engine

    # ---- checks -----------------------------------------------------------------------------------------------------
    def _config_hash(self, args: SOFTConfig, model) -> str:
        """Settings + data fingerprints; a resumed run must match the run that wrote the manifest."""
        prompts = self.prompt_dataset[args.prompt_column]
        digest = hashlib.sha256("\x1e".join(prompts).encode("utf-8")).hexdigest()
        data = json.dumps(
            {
                "principles": self.principles.render(),
                "exemplars": [e.__dict__ for e in self.exemplars],
                "validation": [p.__dict__ for p in self.validation_set],
            },
            sort_keys=True,
        )
        model_id = model if isinstance(model, str) else getattr(model.config, "_name_or_path", type(model).__name__)
        return config_hash(args.soft_fields, [digest, hashlib.sha256(data.encode()).hexdigest(), str(model_id)])

    def _check_output_dir(self, args: SOFTConfig) -> None:
        out = self.soft_output_dir
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PermissionError(
                f"`output_dir`: cannot write to {str(out)!r} ({err.strerror}). Choose a writable folder."
            ) from err
        existing = SOFTState.load(out)
        if existing is not None and existing.config_hash != self.soft_config_hash and not args.overwrite_output_dir:
            raise ValueError(
                f"`output_dir`: {str(out)!r} holds a SOFT run made with a different configuration or data "
                f"({existing.rounds_completed} round(s) done), so it cannot be resumed. Use a new `output_dir`, or "
                "pass `overwrite_output_dir=True` (`--overwrite_output_dir`) to replace it."
            )

    def _choose_engine(self, args: SOFTConfig, model, peft_config, kbit: bool) -> EngineChoice:
        """Which engine generates, decided and announced before any weights load."""
        on_cuda = torch.cuda.is_available() and not args.use_cpu
        try:
            choice = choose_engine(args.engine_settings, read_model_facts(model, peft_config, kbit, on_cuda))
        except EngineUnavailable as err:
            raise ValueError(str(err)) from None
        if is_main_process():
            print(f"SOFT: generation engine: {choice.describe()}", flush=True)
        return choice

    def _check_curriculum(self, args: SOFTConfig, prompts: Dataset, scorer: Scorer | None) -> Scorer | None:
        """The difficulty scorer of this run, after checking that what it reads exists."""
        if args.curriculum == "custom":
            if scorer is None or not callable(scorer):
                raise ValueError(
                    "`curriculum='custom'` needs `SOFTTrainer(difficulty_scorer=...)`: a callable "
                    "(prompts, responses, context) -> one difficulty per pair (higher = harder)."
                )
            return scorer
        if scorer is not None:
            raise ValueError(
                f"A `difficulty_scorer` was passed but `curriculum={args.curriculum!r}`; set `curriculum='custom'` to "
                "use it."
            )
        if args.curriculum == "column":
            column = args.curriculum_column
            if column not in prompts.column_names:
                raise ValueError(
                    f"`curriculum_column={column!r}` is not a column of the prompt dataset (columns: "
                    f"{prompts.column_names}). Add a numeric difficulty column or pick another `curriculum`."
                )
            bad = [i for i, v in enumerate(prompts[column]) if not isinstance(v, (int, float)) or isinstance(v, bool)]
            if bad:
                raise ValueError(
                    f"`curriculum_column={column!r}` must hold a number for every prompt; rows {bad[:5]} do not."
                )
        return SCORERS.get(args.curriculum)

    def _soft_callbacks(self, args: SOFTConfig, callbacks: list[TrainerCallback] | None) -> list[TrainerCallback]:
        """The user's callbacks plus the config's EarlyCollapseCallback; every watched metric must be produced."""
        callbacks = list(callbacks or [])
        watchers = [c for c in callbacks if isinstance(c, EarlyCollapseCallback)]
        if not watchers and args.resolved_collapse_metric is not None:
            callbacks.append(EarlyCollapseCallback.from_config(args))
            watchers = callbacks[-1:]
        produced = set(args.round_metric_names)
        for callback in callbacks:
            if isinstance(callback, SOFTCallback):
                produced.update(callback.provides_metrics)
        if not self.validation_set:
            produced -= {"validation_nll", *(m for m in produced if m.startswith("sample_"))}
        for watcher in watchers:
            if watcher.metric not in produced:
                raise ValueError(
                    f"EarlyCollapseCallback watches {watcher.metric!r}, which no round of this run produces "
                    f"(they produce {sorted(produced)}). Set `collapse_metric` to one of those, or 'none' to turn "
                    "early stopping off."
                )
        return callbacks

    # ---- the round loop -------------------------------------------------------------------------------------------
    def _open_state(self, resume: bool) -> SOFTState:
        existing = SOFTState.load(self.soft_output_dir)
        if existing is not None and existing.rounds_completed > 0 or self._round_dirs():
            if resume and existing is not None and existing.config_hash == self.soft_config_hash:
                return existing
            if not self.args.overwrite_output_dir:
                raise ValueError(
                    f"`output_dir`: {str(self.soft_output_dir)!r} already holds a SOFT run. Continue it with "
                    "`train(resume_from_checkpoint=True)` (`--resume`), or pass `overwrite_output_dir=True` "
                    "(`--overwrite_output_dir`) to start over."
                )
            if is_main_process():
                for folder in self._round_dirs():
                    shutil.rmtree(folder)
            wait_for_everyone()
        state = SOFTState(config_hash=self.soft_config_hash, num_rounds=self.args.num_rounds)
        if is_main_process():
            state.save(self.soft_output_dir)
        return state

    def _round_dirs(self) -> list[Path]:
        return sorted(p for p in self.soft_output_dir.glob("round_*") if p.is_dir())

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs,
    ) -> TrainOutput:
        """Run every remaining round; `resume_from_checkpoint=True` continues a run from its manifest."""
        try:
            return self._train_rounds(bool(resume_from_checkpoint or self.args.resume_from_checkpoint))
        finally:
            self._close_engine()  # a server trl-soft started is stopped, whatever happened

    def _train_rounds(self, resume: bool) -> TrainOutput:
        args = self.args
        state = self._open_state(resume)
        state.engine = self.engine_choice.describe()
        self.soft_state = state
        base_weights = self._trainable_snapshot() if args.round_init == "base" else None
        if state.stopped_early:
            self._load_round_weights(state.final_round)  # a finished early-stopped run: only the final save remains
        elif state.rounds_completed > 0:
            self._load_round_weights(state.rounds_completed)
        if state.rounds_completed == 0:
            if any(getattr(c, "requires_start_weights", False) for c in self._soft_callback_list()):
                self._save_atomically(round_paths(self.soft_output_dir, 0).model)  # a stop may restore round 0
            if args.evaluate_start and (self.validation_set or self.benchmark_suite or self.behaviour.enabled):
                state.base_metrics = {"round": 0, **self._evaluate(0)}
                if is_main_process():
                    state.save(self.soft_output_dir)
                self._premise_check(state.base_metrics.get("premise"))
        for callback in self._soft_callback_list():
            callback.on_soft_begin(args, state)

        output = TrainOutput(global_step=0, training_loss=float("nan"), metrics={})
        first = args.num_rounds + 1 if state.stopped_early else state.rounds_completed + 1
        for round_index in range(first, args.num_rounds + 1):
            output, control = self._run_round(round_index, state, resume, base_weights)
            if control.should_stop:
                if control.restore_round is not None and control.restore_round != round_index:
                    self._load_round_weights(control.restore_round)
                break

        final_dir = self.soft_output_dir / "final_model"
        self._save_atomically(final_dir)
        if not state.stopped_early:  # an early stop has set the final round already
            state.final_round = state.rounds_completed
        args.output_dir = str(final_dir)  # the model card belongs next to the final weights
        if is_main_process():
            state.save(self.soft_output_dir)
            self.create_model_card(model_name=self.soft_output_dir.name)
            table = format_round_table(state.history, state.base_metrics)
            stop = format_stop_line(state)
            verdict = behaviour_verdict(state)
            engine = f"Generation engine: {state.engine}"
            atomic_write_text(
                self.soft_output_dir / "summary.md",
                (f"{verdict}\n\n" if verdict else "") + table + "\n" + (f"\n{stop}\n" if stop else "")
                + f"\n{engine}\n",
            )
            print(f"\nSOFT summary ({state.rounds_completed} rounds, {self.soft_output_dir}):\n"
                  + (f"{verdict}\n\n" if verdict else "") + f"{table}\n{stop}\n", flush=True)
        wait_for_everyone()
        return TrainOutput(output.global_step, output.training_loss, {"soft_history": state.history})

    def _premise_check(self, premise: dict[str, Any] | None) -> None:
        """Say before round 1 whether the principle-driven prompt beats zero-shot; stop if it must and does not."""
        if premise is None:
            return
        if is_main_process():
            print(f"\nSOFT premise check (starting model, greedy):\n{format_premise(premise)}\n",
                  flush=True)
        if self.args.require_premise and premise["verdict"] != "holds":
            raise SOFTPremiseError(
                f"`require_premise=True` and the premise check {premise['verdict']} (see above; the answers are in "
                f"{round_paths(self.soft_output_dir, 0).root / 'behaviour.jsonl'}). Nothing was trained. Improve the "
                "principles or exemplars, use a larger model, or set `require_premise=False` to train anyway."
            )

    def _soft_callback_list(self) -> list[SOFTCallback]:
        return [c for c in self.callback_handler.callbacks if isinstance(c, SOFTCallback)]

    def _run_round(
        self, round_index: int, state: SOFTState, resume: bool, base_weights: dict[str, torch.Tensor] | None
    ) -> tuple[TrainOutput, RoundControl]:
        args = self.args
        paths = round_paths(self.soft_output_dir, round_index)
        timings: dict[str, float] = {}
        synced_before = self._engine_sync_seconds

        started = time.perf_counter()
        if resume and paths.generations.is_file():
            rows = read_jsonl(paths.generations)  # generated before an interruption: no need to redo
        else:
            rows = self._generate_round(round_index, timings)
            if is_main_process():
                atomic_write_jsonl(paths.generations, rows)
            wait_for_everyone()
        timings.setdefault("seconds_generate", time.perf_counter() - started)

        kept = [r for r in rows if r["kept"]]  # generation order; the sampler applies the curriculum
        reasons: dict[str, int] = {}
        for row in rows:
            if row["filter_reason"]:
                reasons[row["filter_reason"]] = reasons.get(row["filter_reason"], 0) + 1
        if not kept:
            raise SOFTRoundError(
                f"Round {round_index}: all {len(rows)} generated answers were filtered out ({reasons}); see "
                f"{paths.generations}. Earlier rounds are kept in {self.soft_output_dir}. Loosen `filters` or "
                "raise `generation_max_new_tokens`, then rerun with --resume."
            )

        examples = [self.formatter.engraving_example(r["prompt"], r["response"], self.engraving_shot) for r in kept]
        if args.curriculum != "none":
            for example, row in zip(examples, kept):
                example[DIFFICULTY_COLUMN] = row["difficulty"]
        self._round_index = round_index
        self.train_dataset = self._prepare_dataset(
            Dataset.from_list(examples), self.processing_class, args, args.packing, None, f"round {round_index}"
        )
        if base_weights is not None:
            self._restore_trainable(base_weights)

        started = time.perf_counter()
        args.output_dir = str(paths.checkpoints)
        self.optimizer, self.lr_scheduler = None, None  # fresh optimizer and schedule every round
        checkpoint = get_last_checkpoint(str(paths.checkpoints)) if resume and paths.checkpoints.is_dir() else None
        output = super().train(resume_from_checkpoint=checkpoint)
        timings["seconds_train"] = time.perf_counter() - started
        self._save_atomically(paths.model)
        self._engine_weights = self._saved_weights(round_index)

        evaluation = self._evaluate(round_index)
        metrics: dict[str, Any] = {
            "round": round_index,
            "prompts": len(rows),
            "kept": len(kept),
            "filtered": reasons,
            "mean_response_tokens": sum(r["num_tokens"] for r in kept) / len(kept),
            "train_loss": output.training_loss,
            "train_steps": output.global_step,
            **evaluation,
            **{k: round(v, 3) for k, v in timings.items()},
            SYNC_METRIC: round(self._engine_sync_seconds - synced_before, 3),
        }
        callbacks = self._soft_callback_list()
        for callback in callbacks:
            callback.on_round_metrics(args, round_index, metrics, model=self.model, trainer=self)
        control = RoundControl()
        for callback in callbacks:
            callback.on_round_end(args, round_index, metrics, control, model=self.model, trainer=self)
        if control.should_stop:
            metrics["stop_reason"] = control.stop_reason
            state.stopped_early = True
            state.stop_reason = control.stop_reason
            state.final_round = control.restore_round if control.restore_round is not None else round_index
        state.record_round(metrics)
        if is_main_process():
            atomic_write_json(paths.metrics, metrics)
            state.save(self.soft_output_dir)  # the stop is on disk before any weights are swapped
        wait_for_everyone()
        self.log({f"soft/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if control.should_stop and is_main_process():
            print(f"\nSOFT: stopping after round {round_index}: {control.stop_reason}.", flush=True)
        return output, control

    def _generate_round(self, round_index: int, timings: dict[str, float]) -> list[dict[str, Any]]:
        """Answer this round's prompts few-shot, filter the answers and score the kept ones' difficulty."""
        args = self.args
        indices = self.round_prompt_indices[round_index - 1]
        column = self.prompt_dataset[args.prompt_column]  # read the column once, not once per prompt
        prompts = [column[i] for i in indices]
        exemplar_sets = [self.exemplar_sampler.sample(round_index, i) for i in indices]
        texts = [self.formatter.generation_prompt(p, ex) for p, ex in zip(prompts, exemplar_sets)]
        started = time.perf_counter()
        results = self._generate(
            texts,
            self._generation_settings(args.generation_max_new_tokens, args.seed + round_index),
            f"Round {round_index}: generate",
        )
        timings["seconds_generate"] = time.perf_counter() - started

        started = time.perf_counter()
        responses = [self.formatter.extract_response(r.text) for r in results]
        candidates = [
            Candidate(prompt=p, response=resp, finished=res.finished, exemplars=ex)
            for p, resp, res, ex in zip(prompts, responses, results, exemplar_sets)
        ]
        filter_settings = FilterSettings(
            min_words=args.filter_min_words,
            max_repeated_ngram_fraction=args.filter_max_repeated_ngram_fraction,
            max_exemplar_overlap=args.filter_max_exemplar_overlap,
        )
        if self.behaviour.gate_on:
            column = self.prompt_dataset[args.principle_gate_column] if args.principle_gate_column else None
            flagged = self.behaviour.gate_violations(
                prompts, responses, [column[i] for i in indices] if column is not None else None
            )
            for candidate, violates in zip(candidates, flagged):
                candidate.violates_principles = violates
        reasons, _ = apply_filters(candidates, args.active_filters, filter_settings)
        kept_positions = [k for k, reason in enumerate(reasons) if reason is None]
        timings["seconds_filter"] = time.perf_counter() - started

        started = time.perf_counter()
        difficulty: dict[int, float] = {}
        train_position: dict[int, int] = {}
        if self.difficulty_scorer is not None and kept_positions:
            scores = self._score_difficulty(
                [prompts[k] for k in kept_positions],
                [responses[k] for k in kept_positions],
                [indices[k] for k in kept_positions],
            )
            difficulty = dict(zip(kept_positions, scores))
            # The order the CurriculumSampler will produce from these scores (same function, same seed).
            order = curriculum_order(
                scores, args.curriculum_direction == "descending", args.curriculum_bucket_size, args.seed + round_index
            )
            train_position = {kept_positions[j]: rank for rank, j in enumerate(order)}
        timings["seconds_score"] = time.perf_counter() - started

        return [
            {
                "prompt_index": indices[k],
                "prompt": prompts[k],
                "exemplar_ids": [e.id for e in exemplar_sets[k]],
                "raw_output": results[k].text,
                "response": responses[k],
                "num_tokens": results[k].num_tokens,
                "finished": results[k].finished,
                "kept": reasons[k] is None,
                "filter_reason": reasons[k],
                "difficulty": difficulty.get(k),
                "train_position": train_position.get(k),
            }
            for k in range(len(indices))
        ]

    def _generate(self, texts: list[str], settings: GenerationSettings, desc: str) -> list[GenerationResult]:
        """Continue every text with the run's engine, on the current weights; the same ordered results everywhere."""
        engine = self._generation_engine()
        self._engine_sync_seconds += engine.load(self._engine_weights, self.accelerator.unwrap_model(self.model))
        return engine.generate(texts, settings, desc)

    def _generation_engine(self) -> GenerationEngine:
        """The engine, started on first use (the first generation of the run)."""
        if self._engine is None:
            choice, args = self.engine_choice, self.args
            if choice.backend == "hf":
                self._engine = HFEngine(lambda: self.model, self.processing_class, self.accelerator)
            else:
                self._engine = MainProcessEngine(
                    lambda: make_vllm_engine(
                        choice, args.engine_settings, self.processing_class, self.soft_output_dir, args.seed
                    )
                )
                if is_main_process():
                    print(f"SOFT: {self._engine.name} started in {self._engine.start_seconds:.1f} s", flush=True)
        return self._engine

    def _close_engine(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def _saved_weights(self, round_index: int) -> EngineWeights:
        """The engine's weights for the model saved after `round_index` (round 0: the starting model)."""
        base = self.engine_choice.base or ""
        if round_index == 0:
            return EngineWeights(base=base)
        return EngineWeights.saved(round_paths(self.soft_output_dir, round_index).model, base, f"round_{round_index}")

    def _generation_settings(self, max_new_tokens: int, seed: int) -> GenerationSettings:
        args = self.args
        return GenerationSettings(
            max_new_tokens=max_new_tokens,
            temperature=args.generation_temperature,
            top_p=args.generation_top_p,
            batch_size=args.generation_batch_size,
            stop_strings=self.formatter.stop_strings,
            seed=seed,
            prefix_cache=args.generation_prefix_cache,
        )

    def _score_difficulty(self, prompts: list[str], responses: list[str], prompt_indices: list[int]) -> list[float]:
        """The curriculum scorer on the kept pairs, with the model that generated them (before this round trains)."""
        context = ScoringContext(
            tokenizer=self.processing_class,
            model=self.model,
            formatter=self.formatter,
            engraving_shot=self.engraving_shot,
            batch_size=self.args.curriculum_batch_size,
            prompt_indices=prompt_indices,
            prompt_dataset=self.prompt_dataset,
            column=self.args.curriculum_column,
        )
        name = self.args.curriculum if self.args.curriculum != "custom" else getattr(
            self.difficulty_scorer, "__name__", "custom"
        )
        return check_scores(self.difficulty_scorer(prompts, responses, context), len(prompts), name)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, plus the SOFT settings and the round table of this run."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero() or getattr(self, "soft_state", None) is None:
            return
        card = Path(self.args.output_dir) / "README.md"
        settings = ", ".join(f"`{k}={v}`" for k, v in self.args.soft_fields.items() if v is not None)
        table = format_round_table(self.soft_state.history, self.soft_state.base_metrics)
        stop = format_stop_line(self.soft_state)
        verdict = behaviour_verdict(self.soft_state)
        premise = (self.soft_state.base_metrics or {}).get("premise")
        behaviour = (f"\n## Behaviour\n\n{verdict}\n\n" if verdict else "") + (
            f"Premise check before round 1 (starting model):\n\n```\n{format_premise(premise)}\n```\n"
            if premise else ""
        )
        section = (
            f"\n## SOFT rounds\n\nTrained with trl-soft for {self.soft_state.rounds_completed} round(s). Round 0 is "
            "the starting model; `val NLL` is the mean negative log-likelihood per token of the reference answers of "
            f"the validation set (lower is better).\n\n{table}\n\n{stop + chr(10) + chr(10) if stop else ''}"
            f"Generation engine: {self.soft_state.engine}\n\nSettings: {settings}\n{behaviour}"
        )
        with open(card, "a", encoding="utf-8") as handle:
            handle.write(section)

    def push_to_hub(self, *args, **kwargs):
        """Push the final model (not the per-round folders) under the run's name."""
        if self.args.hub_model_id is None:
            self.args.hub_model_id = self.soft_output_dir.name
        self.args.output_dir = str(self.soft_output_dir / "final_model")
        return super().push_to_hub(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """With a curriculum on, a `CurriculumSampler` over the difficulty scores of the round dataset.

        The scores are read from `self.train_dataset`: the `train_dataset` handed in here has been pruned to the
        model's input columns already.
        """
        if self.args.curriculum != "none" and DIFFICULTY_COLUMN in (self.train_dataset.column_names or []):
            return CurriculumSampler.from_dataset(
                self.train_dataset,
                descending=self.args.curriculum_direction == "descending",
                bucket_size=self.args.curriculum_bucket_size,
                seed=self.args.seed + getattr(self, "_round_index", 0),
            )
        return super()._get_train_sampler(train_dataset)

    # ---- weights ------------------------------------------------------------------------------------------------------
    def _evaluate(self, round_index: int) -> dict[str, Any]:
        """Validation NLL, collapse diagnostics, behaviour and the configured benchmarks for the current weights."""
        args = self.args
        metrics: dict[str, Any] = {ITEM_SCORES: {}}
        started = time.perf_counter()
        if self.validation_set:
            metrics["validation_nll"], metrics[ITEM_SCORES]["validation_nll"] = validation_nll_items(
                self.model, self.formatter, self.validation_set, args.validation_batch_size
            )
        metrics["seconds_validate"] = round(time.perf_counter() - started, 3)
        if self.behaviour.enabled:
            behaviour = self.behaviour.evaluate(
                round_index, self._generate, round_paths(self.soft_output_dir, round_index).root
            )
            metrics[ITEM_SCORES].update(behaviour.pop(ITEM_SCORES))
            metrics.update(behaviour)
        if self.validation_set and args.diagnostics_num_prompts > 0:
            started = time.perf_counter()
            prompts = [pair.prompt for pair in self.validation_set[: args.diagnostics_num_prompts]]
            metrics.update(
                collapse_diagnostics(
                    self.model,
                    self.formatter,
                    prompts,
                    self._generation_settings(args.diagnostics_max_new_tokens, args.seed),
                    self.accelerator,
                    batch_size=args.validation_batch_size,
                    generate=self._generate,
                )
            )
            metrics["seconds_diagnostics"] = round(time.perf_counter() - started, 3)
        if self.benchmark_suite:
            started = time.perf_counter()
            metrics.update(self.benchmark_suite.evaluate(self.model, self.processing_class))
            metrics["seconds_benchmarks"] = round(time.perf_counter() - started, 3)
        return metrics

    def _save_atomically(self, target: Path) -> None:
        """`save_model` into a temporary folder, then rename: a crash never leaves a half-written model."""
        partial = target.with_name(target.name + ".partial")
        if is_main_process():
            shutil.rmtree(partial, ignore_errors=True)
        wait_for_everyone()
        self.save_model(str(partial))
        if is_main_process():
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
        wait_for_everyone()

    def _load_round_weights(self, round_index: int) -> None:
        model_dir = round_paths(self.soft_output_dir, round_index).model
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"Cannot resume: the manifest says round {round_index} is complete but {model_dir} is missing."
            )
        self._load_from_checkpoint(str(model_dir))
        self._engine_weights = self._saved_weights(round_index)

    def _trainable_snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _restore_trainable(self, snapshot: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in snapshot:
                    param.copy_(snapshot[name])
