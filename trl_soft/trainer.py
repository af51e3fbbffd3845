"""`SOFTTrainer`: TRL's `SFTTrainer` with the Step-On-Feet Tuning round loop.

`train()` runs every round in this one trainer object, and reads as the algorithm:

    regenerate (model of round t-1 answers a fresh chunk of prompts, principles + k exemplars per prompt)
    -> filter -> order (curriculum) -> fine-tune (engraving examples: no principles) -> evaluate -> decide

A `Round` record (`rounds.py`) carries each round through those steps; `round_{t}/generations.jsonl` and
`round_{t}/metrics.json` are written from it, and the run manifest `soft_state.json` is updated after every round,
all atomically, so `train(resume_from_checkpoint=True)` continues after the last completed round (and reuses a round's
generations if they were written before an interruption).

Every concern lives in its own module with its own settings (built once by `SOFTConfig`); this file wires them.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback, set_seed
from transformers.trainer_utils import TrainOutput
from trl import SFTTrainer

from .acceptance import Decision, decide, final_round, generating_round, rejection_streak
from .behaviour.run import BehaviourRun, SOFTPremiseError
from .behaviour.stats import ITEM_SCORES
from .callbacks import RoundControl, SOFTCallback, round_decision, with_collapse_callback
from .config import SOFTConfig, SOFTSettings
from .curriculum import Scorer, ScoringContext
from .data import ValidationPair, check_prompt_column, load_validation_set
from .distributed import is_main_process, wait_for_everyone
from .engines import SYNC_METRIC, EngineChoice
from .engines.session import EngineSession
from .evaluation.suite import RoundEvaluator
from .interrupts import SOFTInterrupted, StopRequests
from .models import (
    EMBEDDED_HUB_ID,
    EMBEDDED_SOURCE_NOTE,
    base_model_of,
    check_model_path,
    ensure_pad_token,
    hub_id_of,
    peft_fingerprint,
    resolve_model_path,
    restore_trainable,
    tied_parameter_names,
    trainable_snapshot,
)
from .progress import RunProgress, quiet_third_party
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
from .quantization import check_kbit_supported, wants_kbit
from .report_html import write_reports
from .reporting import SOFT_CITATION, finish_model_card, model_card_section, printed_summary, round_line
from .rounds import Round, SOFTRoundError
from .run_folder import (
    CHECKPOINT_DONE,
    RunLock,
    SOFTLockError,
    SOFTResumeError,
    check_output_dir,
    check_writable,
    checkpoint_loss_sum,
    clean_leftovers,
    last_complete_checkpoint,
    open_state,
)
from .sampler import CurriculumSampler
from .state import (
    FINAL_MODEL,
    SOFTSaveError,
    SOFTState,
    atomic_write_json,
    config_hash,
    round_paths,
    run_fingerprint,
    save_atomically,
    saving,
)

__all__ = [
    "SOFTInterrupted", "SOFTLockError", "SOFTPremiseError", "SOFTResumeError", "SOFTRoundError", "SOFTSaveError",
    "SOFTTrainer",
]


class SOFTTrainer(SFTTrainer):
    """Step-On-Feet Tuning: multi-round self-alignment by bootstrapping, as a drop-in `SFTTrainer`.

    Args:
        model: as for `SFTTrainer` (hub id, local folder, `"embedded"`, a model or a `PeftModel`).
        args: a [`SOFTConfig`][trl_soft.SOFTConfig].
        train_dataset: the **prompt** dataset: a `Dataset` with a text column `args.prompt_column`. The training
            examples of each round are generated from it.
        principles: overrides the file named in `args` (default: the shipped principles).
        exemplars: overrides the file named in `args` (default: the shipped exemplar pool).
        validation_set: overrides the file named in `args` (default: the shipped validation set).
        difficulty_scorer: with `args.curriculum='custom'`, a callable `(prompts, responses, context) -> scores`
            (higher = harder; `context` is a `trl_soft.curriculum.ScoringContext`) that orders each round's data.
        callbacks: as for `SFTTrainer`; `SOFTCallback`s also get the round events. Unless one is given, an
            `EarlyCollapseCallback` is added from the `collapse_*` fields of `args`.
        **kwargs: passed to `SFTTrainer`, as the arguments not listed here are (`eval_dataset`, `peft_config`, ...).
    """

    _tag_names = ["trl", "sft", "soft", "self-alignment"]
    _name = "SOFT"
    _paper = {
        "title": "Step-On-Feet Tuning: Scaling Self-Alignment of LLMs via Bootstrapping",
        "id": "2402.07610",
        "citation": SOFT_CITATION,
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
        args = args if args is not None else SOFTConfig(output_dir="soft-output")
        if not isinstance(args, SOFTConfig):
            raise TypeError(f"`args` must be a SOFTConfig (got {type(args).__name__}); SOFT needs its round settings.")
        if train_dataset is None:
            raise ValueError("`train_dataset` (the prompt dataset) is required: SOFT generates its data from prompts.")
        if "formatting_func" in kwargs:
            raise ValueError("`formatting_func` is not supported: SOFT builds each round's training examples itself.")
        settings = args.settings
        quiet_third_party(args.log_level)  # harmless third-party noise, unless asked for (`trl_soft.progress`)

        # Everything that can be wrong with the inputs is checked here, before any model is loaded.
        check_prompt_column(train_dataset, settings.rounds.prompt_column, settings.rounds.num_rounds)
        self.prompt_dataset = train_dataset
        self.round_prompt_indices = settings.rounds.prompt_indices(len(train_dataset), args.seed)
        self.principles = principles if principles is not None else load_principles(settings.prompts.principles_path)
        self.exemplars = list(exemplars) if exemplars is not None else load_exemplars(settings.prompts.exemplars_path)
        self.exemplar_sampler = ExemplarSampler(
            self.exemplars, settings.prompts.num_exemplars, settings.prompts.exemplar_sampling, args.seed
        )
        self.validation_set = (
            list(validation_set) if validation_set is not None else load_validation_set(settings.validation.path)
        )
        self.soft_output_dir = Path(args.output_dir)
        benchmarks, filters = settings.benchmarks.load(), settings.filters
        self.behaviour = BehaviourRun(
            settings.behaviour, settings.judges, self.soft_output_dir, gate=filters.gate_on, gate_column=filters.gate_column,
            gate_values=filters.gate_values, prompt_columns=train_dataset.column_names,
            honesty_values=filters.honesty_values if filters.honesty_on else (),
        )
        self.difficulty_scorer = settings.curriculum.scorer(train_dataset, difficulty_scorer)
        callbacks = with_collapse_callback(callbacks, settings, bool(self.validation_set))
        if isinstance(model, str):
            check_model_path(model)
        kbit_config = quantization_config or (args.model_init_kwargs or {}).get("quantization_config")
        check_kbit_supported(kbit_config, peft_config, model)
        self.soft_fingerprint = run_fingerprint(
            settings.fingerprint(), train_dataset[settings.rounds.prompt_column], self.principles.render(),
            self.exemplars, self.validation_set, model, peft_fingerprint(peft_config, model),
            kbit_config.to_dict() if hasattr(kbit_config, "to_dict") else kbit_config,
        )
        self.soft_config_hash = config_hash(self.soft_fingerprint)
        self.lock = RunLock(self.soft_output_dir)  # one run per folder, from here to the end of `train()`
        self._announced_restart = False
        self._check_run_folder(args, resume=bool(args.resume_from_checkpoint))
        if isinstance(model, str):
            model = resolve_model_path(model)  # converts the embedded model on first use: after every check
        engine_choice = EngineSession.choose(settings.engine, model, peft_config, wants_kbit(kbit_config), args.use_cpu)

        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model if isinstance(model, str) else model.config._name_or_path)
        ensure_pad_token(processing_class)
        self.formatter = PromptFormatter(
            processing_class, self.principles, settings.prompts.prompt_format, settings.prompts.use_internal_thoughts,
            settings.generation.stop_strings,
        )
        self.sampling = replace(settings.generation, stop_strings=self.formatter.stop_strings)
        self.engraving_shot = self.exemplars[0] if settings.prompts.engraving_shots == 1 else None
        engine_choice = self._check_lengths(args, model, engine_choice)
        self.behaviour.attach(
            self.formatter,
            lambda position: self.exemplar_sampler.sample(0, position),  # round 0: no round's prompts use it
            self.engraving_shot,
            settings.generation.batch_size,
            args.seed,
        )
        self.evaluator = RoundEvaluator(
            settings.validation, settings.diagnostics, self.sampling, self.validation_set, benchmarks, self.behaviour,
            self.formatter,
        )

        # SFTTrainer wants a training set at construction; the exemplar pool in engraving form stands in until the
        # first round replaces it (it also fixes the dataset format, prompt-completion, for every round).
        placeholder = Dataset.from_list(
            [self.formatter.engraving_example(e.prompt, e.response, self.engraving_shot) for e in self.exemplars]
        )
        super().__init__(
            model=model, args=args, train_dataset=placeholder, eval_dataset=eval_dataset,
            processing_class=processing_class, callbacks=callbacks, peft_config=peft_config,
            quantization_config=quantization_config, **kwargs,
        )
        self.engine = EngineSession(
            engine_choice, settings.engine, self.soft_output_dir, args.seed, lambda: self.model, processing_class,
            self.accelerator,
        )
        self.soft_state: SOFTState | None = None
        self._start_weights: dict | None = None  # with `round_init='base'`: each round's start
        self.round: Round | None = None  # the round being (or last) trained: the HF hooks below read its order
        self.stops = StopRequests(self.soft_output_dir)  # SIGTERM / Ctrl-C during `train()`
        self._resumed_loss_sum = 0.0  # the training loss summed up to the checkpoint a round resumed from
        self._current_round = 0  # whose weights the model holds (0: the starting model)
        self.add_callback(_RoundProgress(self))
        self.progress = RunProgress(settings.rounds.num_rounds, show_bars=not args.disable_tqdm)

    @property
    def settings(self) -> SOFTSettings:
        """Every concern's settings (`SOFTConfig.settings`)."""
        return self.args.settings

    # ---- the algorithm --------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Run every remaining round; `resume_from_checkpoint=True` continues a run from its manifest.

        SIGTERM and Ctrl-C stop the run at the next safe point with `SOFTInterrupted` (see `trl_soft.interrupts`)."""
        resume = bool(resume_from_checkpoint or self.args.resume_from_checkpoint)
        try:
            self._check_run_folder(self.args, resume)
            with self.stops.installed():
                return self._train_rounds(resume)
        finally:
            self.engine.close()  # a server trl-soft started is stopped, whatever happened
            self.lock.release()

    def _train_rounds(self, resume: bool) -> TrainOutput:
        state = self._start(resume)
        output = TrainOutput(global_step=0, training_loss=float("nan"), metrics={})
        first = self.settings.rounds.num_rounds + 1 if state.stopped_early else state.rounds_completed + 1
        for index in range(first, self.settings.rounds.num_rounds + 1):
            self.stops.check(f"before round {index}")
            self.progress.round_start(index, self.sampling.per_prompt * len(self.round_prompt_indices[index - 1]))
            round_ = self.round = self._regenerate(index, resume)
            if not round_.resumed:  # an interrupted attempt filtered and ordered it already
                self._filter(round_)
                self._order(round_)
                self._save_generations(round_)
            self.stops.check(f"after generating round {index}")
            output = self._fine_tune(round_, resume)
            self.stops.check(f"after training round {index}")
            self._evaluate(round_)
            control = self._decide(round_, state, output)
            if control.should_stop:
                break
            self._continue_from(state)
        self._finish(state)
        return TrainOutput(output.global_step, output.training_loss, {"soft_history": state.history})

    # ---- regenerate, filter, order ----------------------------------------------------------------------------------
    def _regenerate(self, index: int, resume: bool) -> Round:
        """This round's prompts answered few-shot by the current model (or read back from an interrupted attempt)."""
        paths, seed, started = round_paths(self.soft_output_dir, index), self.args.seed + index, time.perf_counter()
        if resume and paths.generations.is_file():
            round_ = Round.read(index, paths, seed, self.engine.sync_seconds)
            round_.timings["seconds_generate"] = time.perf_counter() - started
            return round_
        set_seed(seed)  # every phase of a round starts from `seed + round`, whatever an earlier attempt reused
        sync_start = self.engine.sync_seconds
        indices = self.round_prompt_indices[index - 1]
        column = self.prompt_dataset[self.settings.rounds.prompt_column]  # read the column once, not once per prompt
        exemplar_sets = [self.exemplar_sampler.sample(index, i) for i in indices]
        prompts = [column[i] for i in indices]
        n = self.sampling.per_prompt  # best-of-n: each prompt n times in a row, each sample with its own seed
        texts = [self.formatter.generation_prompt(p, ex) for p, ex in zip(prompts, exemplar_sets) for _ in range(n)]
        results = self.engine.generate(texts, replace(self.sampling, seed=seed), f"Round {index}: generate")
        round_ = Round.generated(
            index, paths, seed, indices, prompts, exemplar_sets, results, self.formatter.extract_response, sync_start,
            n,
        )
        round_.timings["seconds_generate"] = time.perf_counter() - started
        return round_

    def _filter(self, round_: Round) -> None:
        """Each answer's verdict: the principle gate, then the quality filters in order."""
        started, filters = time.perf_counter(), self.settings.filters
        set_seed(round_.seed)
        candidates = round_.candidates()
        marks = self.prompt_dataset[filters.gate_column] if filters.gate_column else None
        marks = [marks[i] for i in round_.prompt_indices] if marks is not None else None
        if self.behaviour.gate_on:
            flagged = self.behaviour.gate_violations(round_.prompts, round_.responses, marks)
            for candidate, violates in zip(candidates, flagged):
                candidate.violates_principles = violates
        if filters.honesty_on:
            for candidate, invents in zip(candidates, self.behaviour.inventions(round_.prompts, round_.responses, marks)):
                candidate.invents_facts = invents
        round_.filter_reasons = filters.verdicts(candidates)
        round_.timings["seconds_filter"] = time.perf_counter() - started

    def _order(self, round_: Round) -> None:
        """The kept answers' difficulty (scored by the model that wrote them) and the one training order it gives."""
        started, kept = time.perf_counter(), round_.kept
        set_seed(round_.seed)
        round_.difficulty = [None] * len(round_.prompts)
        if self.difficulty_scorer is not None and kept:
            context = ScoringContext(
                tokenizer=self.processing_class, model=self.model, formatter=self.formatter,
                engraving_shot=self.engraving_shot, batch_size=self.settings.curriculum.batch_size,
                prompt_indices=[round_.prompt_indices[k] for k in kept], prompt_dataset=self.prompt_dataset,
                column=self.settings.curriculum.column,
            )
            prompts, responses = zip(*round_.training_pairs())
            scores, order = self.settings.curriculum.rank(
                self.difficulty_scorer, list(prompts), list(responses), context, round_.seed
            )
            for k, score in zip(kept, scores):
                round_.difficulty[k] = score
            round_.train_order = [kept[j] for j in order]
        round_.choose_best()  # best-of-n: one passing sample per prompt, by the scores just computed
        if round_.train_order is not None:
            round_.train_order = [k for k in round_.train_order if round_.filter_reasons[k] is None]
        round_.timings["seconds_score"] = time.perf_counter() - started

    def _save_generations(self, round_: Round) -> None:
        if is_main_process():
            with self._saving(f"Round {round_.index}: writing {round_.paths.generations}"):
                round_.save_generations()
        wait_for_everyone()

    # ---- train ------------------------------------------------------------------------------------------------------
    def _fine_tune(self, round_: Round, resume: bool) -> TrainOutput:
        """Fine-tune on the kept answers without principles (in the curriculum's order), then save the round (its
        model, then its training figures); an interrupted attempt's checkpoints are resumed, its saved model reused."""
        round_.check_kept(self.soft_output_dir)
        self.engine.sleep()  # a colocated engine on CUDA gives its GPU memory to training; it wakes to generate
        started, paths = time.perf_counter(), round_.paths
        trained = round_.read_training() if resume else None
        if trained is not None:  # the interrupted attempt trained and saved this round: only its evaluation remains
            self._load_round_weights(round_.index)
            output = TrainOutput(trained[0], trained[1], {})
        else:
            output = self._train_round(round_, last_complete_checkpoint(paths.checkpoints) if resume else None)
            with self._saving(f"Round {round_.index}: saving its model to {paths.model}"):
                save_atomically(self.save_model, paths.model)
                if is_main_process():
                    round_.save_training(output.global_step, output.training_loss)
            self.engine.use_round(round_.index)
        self._current_round = round_.index
        round_.timings["seconds_train"] = time.perf_counter() - started
        if is_main_process() and not self.settings.rounds.keep_checkpoints:
            shutil.rmtree(paths.checkpoints, ignore_errors=True)  # the round's model is all a resume needs now
        return output

    def _train_round(self, round_: Round, checkpoint: str | None) -> TrainOutput:
        """The HF training loop over the round's examples, from `checkpoint` when an interrupted attempt left one."""
        examples = [self.formatter.engraving_example(p, r, self.engraving_shot) for p, r in round_.training_pairs()]
        self.train_dataset = self._prepare_dataset(
            Dataset.from_list(examples), self.processing_class, self.args, self.args.packing, None,
            f"round {round_.index}",
        )
        if self._start_weights is not None:
            restore_trainable(self.model, self._start_weights)
        self.optimizer, self.lr_scheduler = None, None  # fresh optimizer and schedule every round
        self._resumed_loss_sum = checkpoint_loss_sum(checkpoint)
        set_seed(round_.seed)  # dropout and the sampler see the same random state however the round was reached
        with self._writing_to(round_.paths.checkpoints), self._saving(f"Round {round_.index}: training"):
            return super().train(resume_from_checkpoint=checkpoint)

    # ---- evaluate and decide -----------------------------------------------------------------------------------------------------
    def _evaluate(self, round_: Round) -> None:
        """Validation, behaviour, diagnostics and benchmarks of the round's model (the engine has its weights)."""
        set_seed(round_.seed)
        with self.progress.phase(round_.index, "evaluate"):
            round_.metrics.update(self.evaluator.evaluate(
                round_.index, self.model, self.accelerator, self.engine.generate, round_.paths.root
            ))

    def _decide(self, round_: Round, state: SOFTState, output: TrainOutput) -> RoundControl:
        """Accept or reject the round against the starting model (pooled paired behaviour items); then the callbacks,
        which may stop the run, and the rejections in a row (`rejection_patience`); then the round is recorded."""
        metrics = {
            **round_.summary_metrics(), "train_loss": output.training_loss, "train_steps": output.global_step,
            **round_.metrics, **{k: round(v, 3) for k, v in round_.timings.items()},
            SYNC_METRIC: round(self.engine.sync_seconds - round_.engine_sync_start, 3),
        }
        decision = self._accept(round_.index, state, metrics)
        metrics.update(decision.metrics())
        round_.metrics = metrics
        control = round_decision(self._soft_callback_list(), self.args, round_.index, metrics, self.model, self)
        if control.should_stop and control.restore_round is not None:
            state.collapse_round = control.restore_round
        state.record_round(metrics)
        streak, patience = rejection_streak(state.history), self.settings.acceptance.patience
        if not control.should_stop and streak >= patience:
            control.should_stop = True
            control.stop_reason = f"{streak} rejected round(s) in a row (`rejection_patience={patience}`)"
        if control.should_stop:
            state.stop_reason = control.stop_reason
            state.stopped_early = True
        state.final_round = final_round(state.history, self.settings.acceptance, state.collapse_round)
        metrics["stop_reason"] = state.stop_reason if control.should_stop else None
        if is_main_process():
            with self._saving(f"Round {round_.index}: writing its metrics and the manifest"):
                round_.save_metrics()
                state.save(self.soft_output_dir)  # the decision is on disk before any weights are swapped
        wait_for_everyone()
        self.log({f"soft/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if is_main_process():  # one line: the round's figures and its decision (and the stop)
            self.progress.round_end(round_.index, round_line(
                metrics, state.base_metrics, control.stop_reason if control.should_stop else None,
                self.settings.acceptance.watch,
            ), round_.timings)
        return control

    def _accept(self, index: int, state: SOFTState, metrics: dict) -> Decision:
        """The round's acceptance decision: its zero-shot behaviour items against the starting model's."""
        start = (state.base_metrics or {}).get(ITEM_SCORES)
        if self.behaviour.enabled and start is None:
            return Decision(index, None, "the starting model was not evaluated (`evaluate_start=False`)")
        return decide(index, start, metrics.get(ITEM_SCORES) or {}, self.settings.acceptance)

    def _continue_from(self, state: SOFTState) -> None:
        """After a rejected round, the next one is generated and trained from the last accepted model
        (`generate_from`)."""
        source = generating_round(state.history, self.settings.acceptance)
        if source is not None and source != self._current_round:
            if is_main_process():
                print(f"SOFT: the next round starts from {'the starting model' if source == 0 else f'round {source}'}"
                      " (the last accepted model).", flush=True)
            self._load_round_weights(source)

    # ---- start and finish -------------------------------------------------------------------------------------------
    def _start(self, resume: bool) -> SOFTState:
        """Open the manifest, load the weights to continue from, and score the starting model (round 0)."""
        rounds = self.settings.rounds
        if is_main_process():
            removed = clean_leftovers(self.soft_output_dir)
            if removed:
                print(f"SOFT: removed {len(removed)} leftover(s) of an interrupted run: "
                      f"{', '.join(str(p.relative_to(self.soft_output_dir)) for p in removed)}", flush=True)
        wait_for_everyone()
        state = self.soft_state = open_state(
            self.soft_output_dir, self.soft_fingerprint, self.soft_config_hash, rounds.num_rounds, resume,
            rounds.overwrite_output_dir,
        )
        state.engine = self.engine.choice.describe()
        state.unmeasured = self.behaviour.unmeasured_note() or None
        self._start_weights = trainable_snapshot(self.model) if rounds.round_init == "base" else None
        self._current_round = 0
        if state.stopped_early:
            self._load_round_weights(state.final_round)  # a finished early-stopped run: only the final save remains
        elif state.rounds_completed > 0:
            self._load_round_weights(generating_round(state.history, self.settings.acceptance))
        if state.rounds_completed == 0:
            keeps_start = self.behaviour.enabled or any(
                getattr(c, "requires_start_weights", False) for c in self._soft_callback_list()
            )
            if keeps_start:
                start_dir = round_paths(self.soft_output_dir, 0).model  # a stop may restore the starting model
                with self._saving(f"Saving the starting model to {start_dir}"):
                    save_atomically(self.save_model, start_dir)
            if self.evaluator.scores_start:
                set_seed(self.args.seed)
                with self.progress.phase(0, "evaluate (starting model)"):
                    state.base_metrics = {"round": 0, **self.evaluator.evaluate(
                        0, self.model, self.accelerator, self.engine.generate, round_paths(self.soft_output_dir, 0).root
                    )}
                if is_main_process():
                    state.save(self.soft_output_dir)
                self.behaviour.check_premise(state.base_metrics.get("premise"))
        for callback in self._soft_callback_list():
            callback.on_soft_begin(self.args, state)
        return state

    def _finish(self, state: SOFTState) -> None:
        """Load the final round's weights (the best accepted round, see `acceptance.py`), save them as the final
        model with its model card, and write the run summary."""
        state.final_round = final_round(state.history, self.settings.acceptance, state.collapse_round)
        if state.final_round != self._current_round:
            self._load_round_weights(state.final_round)
        final_dir = self.soft_output_dir / FINAL_MODEL
        with self._saving(f"Saving the final model to {final_dir}"):
            save_atomically(self.save_model, final_dir)
        if is_main_process():
            state.save(self.soft_output_dir)
            with self._writing_to(final_dir):  # the model card belongs next to the final weights
                self.create_model_card(model_name=self.soft_output_dir.name)
            reports = write_reports(self.soft_output_dir, state)  # summary.md; with matplotlib, plots and HTML
            print(printed_summary(state, str(self.soft_output_dir), reports), flush=True)
        wait_for_everyone()

    def _soft_callback_list(self) -> list[SOFTCallback]:
        return [c for c in self.callback_handler.callbacks if isinstance(c, SOFTCallback)]

    # ---- hooks of the HF Trainer --------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        """With a curriculum on, the round's training order (`Round.train_order`); else the Trainer's shuffle."""
        round_ = getattr(self, "round", None)  # None while the HF Trainer is being built
        order = round_.sampler_order() if round_ is not None else None
        if self.settings.curriculum.on and order is not None:
            return CurriculumSampler(order)
        return super()._get_train_sampler(train_dataset)

    @contextlib.contextmanager
    def _writing_to(self, folder: Path):
        """`args.output_dir` is where the HF Trainer writes (checkpoints, the model card); point it at `folder` for
        the duration, and back at the run's folder after."""
        self.args.output_dir = str(folder)
        try:
            yield
        finally:
            self.args.output_dir = str(self.soft_output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, plus the SOFT settings and the round table of this run."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():  # base_model, library_name, quick start, adapter base: see the function
            base = hub_id_of(base_model_of(self.model))
            finish_model_card(Path(self.args.output_dir), base, self.args.hub_model_id or self.args.output_dir,
                              EMBEDDED_SOURCE_NOTE if base == EMBEDDED_HUB_ID else None)
        if self.is_world_process_zero() and getattr(self, "soft_state", None) is not None:
            with open(Path(self.args.output_dir) / "README.md", "a", encoding="utf-8") as handle:
                handle.write(model_card_section(self.soft_state, self.settings.fingerprint()))

    def push_to_hub(self, *args, **kwargs):
        """Push the final model (not the per-round folders) under the run's name."""
        if self.args.hub_model_id is None:
            self.args.hub_model_id = self.soft_output_dir.name
        with self._writing_to(self.soft_output_dir / FINAL_MODEL):
            return super().push_to_hub(*args, **kwargs)

    # ---- the run's folder, checkpoints and weights -----------------------------------------------------------------
    def _check_run_folder(self, args: SOFTConfig, resume: bool) -> None:
        """Lock `output_dir` and check what it holds against this run (before any model loads when called from
        `__init__`; again when `train()` starts, which knows whether it resumes)."""
        check_writable(self.soft_output_dir)
        main = is_main_process()
        if main and not self.lock.held:
            self.lock.acquire()
            if self.lock.stale_holder:
                print(f"SOFT: took over the lock of an interrupted run ({self.lock.stale_holder}).", flush=True)
        rounds = args.settings.rounds

        def same_prompts(old: dict, completed: int) -> bool:
            before = replace(rounds, num_rounds=old["num_rounds"], prompts_per_round=old["prompts_per_round"])
            return before.prompt_indices(len(self.prompt_dataset), args.seed)[:completed] == (
                self.round_prompt_indices[:completed]
            )

        try:
            existing = check_output_dir(
                self.soft_output_dir, self.soft_fingerprint, self.soft_config_hash, rounds.overwrite_output_dir,
                resume, same_prompts, killed_run=self.lock.stale_holder if main else True,
            )
            if resume and existing is None and main and self.lock.stale_holder and not self._announced_restart:
                print(f"SOFT: the run killed in {str(self.soft_output_dir)!r} ({self.lock.stale_holder}) had not "
                      "completed its start (no soft_state.json): --resume starts it from the beginning.", flush=True)
                self._announced_restart = True
        except BaseException:
            self.lock.release()
            raise

    def _check_lengths(self, args: SOFTConfig, model, engine_choice: EngineChoice) -> EngineChoice:
        """Every round's prompts fit the model's context (and an explicit `vllm_max_model_len`) with their answers,
        and `max_length` holds every prompt with room for an answer: counted with the tokenizer and the model's config
        alone, so a prompt no round could use stops the run before any weights load. Returns the engine choice with
        its `max_model_len` sized to the longest prompt the engine will answer (the rounds', the behaviour sets',
        the diagnostics samples') plus its answer."""
        settings = args.settings  # called from `__init__`, before the HF Trainer sets `self.args`
        context = model_context_length(model)
        engine_limit = settings.engine.max_model_len if engine_choice.backend == "vllm" else None
        try:
            longest = check_lengths(
                self.formatter, self.prompt_dataset[settings.rounds.prompt_column], self.round_prompt_indices,
                self.exemplar_sampler, args.max_length, settings.generation.max_new_tokens, context,
                self.engraving_shot, engine_limit,
            )
        except ValueError:
            self.lock.release()
            raise
        sampler, others = self.exemplar_sampler, (  # bounded, not counted one by one
            ([i.prompt for items in self.behaviour.sets.items.values() for i in items], settings.behaviour.max_new_tokens),
            ([p.prompt for p in (self.validation_set or [])[: settings.diagnostics.num_prompts]], settings.diagnostics.max_new_tokens),
        )
        need = max([longest + settings.generation.max_new_tokens] + [
            prompt_bound(self.formatter, prompts, sampler.pool, sampler.k, self.engraving_shot) + new
            for prompts, new in others if prompts
        ])
        return engine_choice.with_lengths(need, context, engine_limit)

    def __del__(self):
        lock = self.__dict__.get("lock")
        if lock is not None:
            lock.release()

    @contextlib.contextmanager
    def _saving(self, what: str):
        """A failed write (full disk, lost mount) raises `SOFTSaveError` naming `what`, the rounds done and --resume."""
        done = self.soft_state.rounds_completed if self.soft_state is not None else 0
        with saving(what, self.soft_output_dir, done):
            yield

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then a completion mark (with the loss summed so far): a checkpoint a kill
        interrupted has none, and is skipped and removed; `train_loss` survives a resume from a marked one."""
        super()._save_checkpoint(model, trial)
        pending = self.accelerator.gather(self._tr_loss.detach().reshape(1)).mean().item()
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if is_main_process():
            atomic_write_json(folder / CHECKPOINT_DONE, {
                "global_step": self.state.global_step, "loss_sum": self._total_loss_scalar + pending,
            })

    def _issue_warnings_after_load(self, load_result) -> None:
        """A round's weights must load whole: a missing or unexpected key means the folder is not this model's."""
        tied = tied_parameter_names(self.model)
        missing = [k for k in load_result.missing_keys if k not in tied]
        if missing or load_result.unexpected_keys:
            raise SOFTResumeError(
                f"Loading saved weights into the model left {len(missing)} missing and "
                f"{len(load_result.unexpected_keys)} unexpected key(s) (e.g. {(missing or load_result.unexpected_keys)[:3]}): "
                "they were saved from a different model or PEFT setup. Resume with the settings the run was made with."
            )
        super()._issue_warnings_after_load(load_result)

    def _load_round_weights(self, round_index: int) -> None:
        model_dir = round_paths(self.soft_output_dir, round_index).model
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"Cannot resume: the manifest says round {round_index} is complete but {model_dir} is missing."
            )
        self._load_from_checkpoint(str(model_dir))
        self.engine.use_round(round_index)
        self._current_round = round_index


class _RoundProgress(TrainerCallback):
    """Inside a round's HF training loop: restore the loss summed before the checkpoint a round resumed from, and on
    SIGTERM / Ctrl-C save a checkpoint at the end of the current step, then stop."""

    def __init__(self, trainer: SOFTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._total_loss_scalar = self.trainer._resumed_loss_sum  # the Trainer has just zeroed it

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.stops.requested:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        round_ = self.trainer.round
        self.trainer.stops.check(f"in round {round_.index if round_ else '?'}'s training, at step {state.global_step} "
                                 "(checkpoint saved)")

