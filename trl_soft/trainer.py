"""`SOFTTrainer`: TRL's `SFTTrainer` with the Step-On-Feet Tuning round loop.

`train()` runs every round in this one trainer object, and reads as the algorithm:

    regenerate (model of round t-1 answers a fresh chunk of prompts, principles + k exemplars per prompt)
    -> filter -> order (curriculum) -> fine-tune (engraving examples: no principles) -> evaluate -> decide

A `Round` record (`rounds.py`) carries each round through those steps. The run's store (`run_store.py`), opened once
per `train()`, fresh or resumed, says what is already done (a round's generations, its trained model, a checkpoint)
and writes every file, atomically: `round_{t}/generations.jsonl`, the round's model, `round_{t}/metrics.json` and the
manifest `soft_state.json` after every round, so `train(resume_from_checkpoint=True)` continues after the last
completed round and reuses what an interrupted round wrote. The round's decision (`decision.py`) is made in one place:
accepted or not, whether to stop, the round the next one starts from, the final round.

Every concern lives in its own module with its own settings (built once by `SOFTConfig`); this file wires them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback, set_seed
from transformers.trainer_utils import TrainOutput
from trl import SFTTrainer

from . import models
from .acceptance import accepted_so_far, generating_round
from .aligned import AlignedData
from .behaviour.run import BehaviourRun
from .callbacks import SOFTCallback, round_decided, round_decision, training_lines, with_collapse_callback
from .config import SOFTConfig, SOFTSettings
from .curriculum import Scorer, ScoringContext
from .data import ValidationPair
from .decision import RoundDecision, decide_round
from .distributed import is_main_process, wait_for_everyone
from .engines.session import EngineSession
from .evaluation.suite import RoundEvaluator
from .filters import last_sentence
from .inputs import RunInputs
from .interrupts import RoundStops, StopRequests
from .progress import RunProgress, follow_log_level, say
from .prompting import Exemplar, Principles
from .quantization import check_kbit_supported, wants_kbit
from .reporting.html import write_reports
from .reporting.model_card import SOFT_CITATION, complete_model_card
from .reporting.summary import printed_summary
from .reporting.table import round_line
from .rounds import Round
from .run_folder import RunFolder, checkpoint_loss_sum
from .run_store import RunStore
from .sampler import CurriculumSampler
from .state import FINAL_MODEL, SOFTState, config_hash


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
        if "formatting_func" in kwargs:
            raise ValueError("`formatting_func` is not supported: SOFT builds each round's training examples itself.")
        settings = args.settings
        follow_log_level(args)  # the `trl_soft` logger's level, as the Trainer sets its own (`trl_soft.progress`)

        # Everything that can be wrong with the inputs is checked here, before any model is loaded.
        inputs = self.inputs = RunInputs.load(settings, args.seed, train_dataset, principles, exemplars, validation_set)
        self.prompt_dataset, self.exemplars, self.validation_set = inputs.prompts, inputs.exemplars, inputs.validation_set
        self.soft_output_dir = Path(args.output_dir)
        self.behaviour = BehaviourRun.for_run(settings, self.soft_output_dir, train_dataset.column_names)
        benchmarks, self.difficulty_scorer = settings.benchmarks.load(), settings.curriculum.scorer(train_dataset, difficulty_scorer)
        inputs.check_overlap(self.behaviour.all_items + benchmarks.texts(), settings.rounds.allow_eval_overlap)
        self.aligned = AlignedData.for_run(settings, inputs.exemplars, args.seed)
        callbacks = with_collapse_callback(callbacks, settings, bool(self.validation_set))
        if isinstance(model, str):
            models.check_model_path(model)
        kbit_config = quantization_config or (args.model_init_kwargs or {}).get("quantization_config")
        check_kbit_supported(kbit_config, peft_config, model)
        self.soft_fingerprint = inputs.fingerprint(settings, model, peft_config, kbit_config)
        self.soft_config_hash = config_hash(self.soft_fingerprint)
        self.folder = RunFolder(self.soft_output_dir)  # locked from here to the end of `train()`
        self._check_run_folder(args, resume=bool(args.resume_from_checkpoint))
        with self.folder.released_on_error():
            if isinstance(model, str):
                model = models.resolve_model_path(model)  # converts the embedded model on first use: after every check
            engine_choice = EngineSession.choose(settings.engine, model, peft_config, wants_kbit(kbit_config), args.use_cpu)
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model if isinstance(model, str) else model.config._name_or_path)
            models.ensure_pad_token(processing_class)
            self.formatter, self.engraving_shot = inputs.prompt_format(processing_class, settings)
            self.sampling = replace(settings.generation, stop_strings=self.formatter.stop_strings)
            engine_choice = EngineSession.fit(inputs.fit_engine(  # then held against the memory plan (on CUDA)
                engine_choice, settings, self.formatter, self.engraving_shot, model, args.max_length,
                [i.prompt for items in self.behaviour.sets.items.values() for i in items],
            ), settings, args, model, peft_config, kbit_config)
        self.behaviour.attach(  # round 0's exemplars: no round's prompts use it
            self.formatter, lambda position, text: inputs.sampler.sample(0, position, text), self.engraving_shot,
            settings.generation.batch_size, args.seed,
        )
        self.evaluator = RoundEvaluator(
            settings.validation, settings.diagnostics, self.sampling, self.validation_set, benchmarks,
            self.behaviour, self.formatter,
        )
        super().__init__(  # the training set stands in until the first round replaces it (`RunInputs.placeholder`)
            model=model, args=args, train_dataset=inputs.placeholder(self.formatter, self.engraving_shot),
            eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks, peft_config=peft_config,
            quantization_config=quantization_config, **kwargs,
        )
        self.engine = EngineSession(
            engine_choice, settings.engine, self.soft_output_dir, args.seed, lambda: self.model, processing_class,
            self.accelerator,
        )
        self.store, self.soft_state = None, None  # `train()` opens the run's store (`RunStore`); its manifest
        self._start_weights: dict | None = None  # with `round_init='base'`: each round's start
        self.round: Round | None = None  # the round being (or last) trained: the HF hooks below read its order
        self.stops = StopRequests(self.soft_output_dir)  # SIGTERM / Ctrl-C during `train()`
        self._resumed_loss_sum = 0.0  # the training loss summed up to the checkpoint a round resumed from
        self._current_round = 0  # whose weights the model holds (0: the starting model)
        self.add_callback(RoundStops(self))
        self.progress = training_lines(self, RunProgress(settings.rounds.num_rounds, show_bars=not args.disable_tqdm))

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
                rounds = self.settings.rounds
                self.store = RunStore.open(self.folder, self.soft_fingerprint, self.soft_config_hash, rounds.num_rounds,
                                           resume, rounds.overwrite_output_dir, self.args.seed)
                return self._train_rounds()
        finally:
            self.engine.close()  # a server trl-soft started is stopped, whatever happened
            self.folder.release()

    def _train_rounds(self) -> TrainOutput:
        state = self._start()
        output = TrainOutput(global_step=0, training_loss=float("nan"), metrics={})
        for index in range(self.store.next_round(), self.settings.rounds.num_rounds + 1):
            self.stops.check(f"before round {index}")
            self.progress.round_start(index, self.sampling.per_prompt * len(self.inputs.round_indices[index - 1]))
            round_ = self.round = self.store.generated(index, self.engine.sync_seconds)  # an earlier attempt's
            if round_ is None:  # not generated yet (an earlier attempt's round is filtered and ordered already)
                round_ = self.round = self._regenerate(index)
                self._filter(round_)
                self._order(round_)
                self.store.save_generations(round_)
            self.stops.check(f"after generating round {index}")
            output = self._fine_tune(round_)
            self.stops.check(f"after training round {index}")
            self._evaluate(round_)
            decision = self._decide(round_, output)
            if decision.stop:
                break
            self._continue_from(decision.generating_round)
        self._finish(state)
        return TrainOutput(output.global_step, output.training_loss, {"soft_history": state.history})

    # ---- regenerate, filter, order ----------------------------------------------------------------------------------
    def _regenerate(self, index: int) -> Round:
        """This round's prompts answered few-shot by the current model."""
        paths, seed, started = self.store.round(index), self.args.seed + index, time.perf_counter()
        set_seed(seed)  # every phase of a round starts from `seed + round`, whatever an earlier attempt reused
        sync_start = self.engine.sync_seconds
        indices, prompts, exemplar_sets = self.inputs.round_prompts(index)
        n = self.sampling.per_prompt  # best-of-n: each prompt n times in a row, each sample with its own seed
        texts = [self.formatter.generation_prompt(p, ex) for p, ex in zip(prompts, exemplar_sets) for _ in range(n)]
        label = self.progress.label("generate", index)  # the bar: `Round 2/3 generate`
        results = self.engine.generate(texts, replace(self.sampling, seed=seed), label)
        round_ = Round.generated(index, paths, seed, indices, prompts, exemplar_sets, results,
                                 self.formatter.extract_response, sync_start, n)
        return round_.timed("seconds_generate", started)

    def _filter(self, round_: Round) -> None:
        """Each answer's verdict (the length rule, the principle gate, then the quality filters in order); retries for
        the prompts that call for a refusal, an admission or a correction and kept none (`aligned.py`); with `round_data=
        'accumulate'`, the kept answers of the earlier accepted rounds join."""
        started, filters = time.perf_counter(), self.settings.filters
        set_seed(round_.seed)
        values = self.inputs.column_values(filters.gate_column, round_.prompt_indices)
        round_.calls_for = self.aligned.kinds(values, round_.prompts)
        if filters.cuts:
            round_.cut_truncated(lambda text: last_sentence(text, filters.min_words),
                                 lambda text: len(self.processing_class(text, add_special_tokens=False).input_ids))
        verdicts = lambda c, marks: filters.verdicts(self.behaviour.judge_candidates(c, marks, filters.honesty_on))  # noqa: E731

        round_.filter_reasons = verdicts(round_.candidates(round_.calls_for), values)
        self.aligned.fill(round_, values, self.engine.generate, replace(self.sampling, seed=round_.seed),
                          self.formatter, verdicts)
        if self.settings.rounds.data == "accumulate":
            round_.carry([self.store.generated(i) for i in accepted_so_far(self.store.state.history)],
                         self.settings.rounds.replay_limit(len(round_.kept)))
        round_.timed("seconds_filter", started)

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
            round_.set_difficulty(scores, order)
        round_.choose_best()  # best-of-n: one passing sample per prompt, by the scores just computed
        round_.timed("seconds_score", started)

    # ---- train ------------------------------------------------------------------------------------------------------
    def _fine_tune(self, round_: Round) -> TrainOutput:
        """Fine-tune on the kept answers without principles (in the curriculum's order), then save the round (its
        model, then its training figures); an interrupted attempt's checkpoints are resumed, its saved model reused."""
        round_.check_kept(self.soft_output_dir)
        self.engine.sleep()  # a colocated engine on CUDA gives its GPU memory to training; it wakes to generate
        started = time.perf_counter()
        trained = self.store.trained(round_.index)
        if trained is not None:  # the interrupted attempt trained and saved this round: only its evaluation remains
            self._load_round_weights(round_.index)
            output = TrainOutput(trained[0], trained[1], {})
        else:
            output = self._train_round(round_, self.store.checkpoint(round_.index))
            self.store.save_trained(self.save_model, round_, output.global_step, output.training_loss)
            self.engine.use_round(round_.index)
        self._current_round = round_.index
        round_.timed("seconds_train", started)
        if is_main_process() and not self.settings.rounds.keep_checkpoints:
            self.store.drop_checkpoints(round_.index)
        return output

    def _train_round(self, round_: Round, checkpoint: str | None) -> TrainOutput:
        """The HF training loop over the round's examples, from `checkpoint` when an interrupted attempt left one."""
        examples = [self.formatter.engraving_example(p, r, self.engraving_shot) for p, r in round_.training_pairs()]
        self.train_dataset = self._prepare_dataset(Dataset.from_list(examples), self.processing_class, self.args,
                                                   self.args.packing, None, f"round {round_.index}")
        if self.settings.filters.truncation == "prefix":  # a cut answer is the start of one: no end-of-turn learned
            self.train_dataset = self.formatter.unended(self.train_dataset, [round_.cut[k] for k in round_.kept])
        if self._start_weights is not None:
            models.restore_trainable(self.model, self._start_weights)
        self.optimizer, self.lr_scheduler = None, None  # fresh optimizer and schedule every round
        self._resumed_loss_sum = checkpoint_loss_sum(checkpoint)
        set_seed(round_.seed)  # dropout and the sampler see the same random state however the round was reached
        with self.folder.hf_output(self.args, round_.paths.checkpoints), self.folder.saving(f"Round {round_.index}: training"):
            return super().train(resume_from_checkpoint=checkpoint)

    # ---- evaluate and decide -----------------------------------------------------------------------------------------------------
    def _evaluate(self, round_: Round) -> None:
        """Validation, behaviour, diagnostics and benchmarks of the round's model (the engine has its weights)."""
        set_seed(round_.seed)
        with self.progress.phase(round_.index, "evaluate"):
            round_.metrics.update(self.evaluator.evaluate(
                round_.index, self.model, self.accelerator, self.engine.generate, round_.paths.root
            ))

    def _decide(self, round_: Round, output: TrainOutput) -> RoundDecision:
        """The round's decision (`decide_round`): accepted or rejected against the starting model (pooled paired
        behaviour items), the callbacks' verdicts, the stop (theirs, or `rejection_patience`), the next round's start
        and the final round; recorded (metrics and manifest), then given to the callbacks."""
        state, callbacks = self.store.state, self._soft_callback_list()

        def verdicts(metrics):
            round_.metrics = metrics  # the callbacks see the round (`trainer.round`) with its metrics
            return round_decision(callbacks, self.args, round_.index, metrics, self.model, self)

        decision = decide_round(
            round_.index, round_.final_metrics(output.training_loss, output.global_step, self.engine.sync_seconds),
            state.base_metrics, state.history, state.collapse_round, self.settings.acceptance, self.behaviour.enabled,
            verdicts,
        )
        self.store.record(round_, decision)  # before weights are swapped
        metrics = decision.metrics
        self.log({f"soft/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.progress.round_end(round_.index, round_line(  # one line: the round's figures, its decision, the stop
            metrics, state.base_metrics, decision.stop_reason, self.settings.acceptance.watch,
        ), round_.timings)
        round_decided(callbacks, self.args, decision, self.model, self)
        return decision

    def _continue_from(self, source: int) -> None:
        """After a rejected round, the next one is generated and trained from the last accepted model
        (`generate_from`; `source`, from the round's decision)."""
        if source != self._current_round:
            if is_main_process():
                say(f"the next round starts from {'the starting model' if source == 0 else f'round {source}'} (the "
                    "last accepted model).")
            self._load_round_weights(source)

    # ---- start and finish -------------------------------------------------------------------------------------------
    def _start(self) -> SOFTState:
        """The store's manifest (fresh or resumed), the weights to continue from, the starting model scored (round 0)."""
        rounds, state = self.settings.rounds, self.store.state
        self.settings.acceptance.check_model(self.model)  # before any round (`final_interpolation`)
        self.soft_state = state
        state.engine = self.engine.choice.describe()
        state.unmeasured = self.behaviour.unmeasured_note() or None
        self._start_weights = models.trainable_snapshot(self.model) if rounds.round_init == "base" else None
        self._current_round = 0
        if state.stopped_early:
            self._load_round_weights(state.final_round)  # a finished early-stopped run: only the final save remains
        elif state.rounds_completed > 0:
            self._load_round_weights(generating_round(state.history, self.settings.acceptance))
        if state.rounds_completed == 0:
            keeps_start = self.behaviour.enabled or self.settings.acceptance.final_interpolation < 1 or any(
                getattr(c, "requires_start_weights", False) for c in self._soft_callback_list()
            )
            if keeps_start:  # the acceptance rule or a stop may return the starting model
                self.store.save_start_model(self.save_model)
            if self.evaluator.scores_start:
                set_seed(self.args.seed)
                with self.progress.phase(0, "evaluate (starting model)"):
                    state.base_metrics = {"round": 0, **self.evaluator.evaluate(
                        0, self.model, self.accelerator, self.engine.generate, self.store.round(0).root
                    )}
                self.store.save_manifest()
                self.behaviour.check_premise(state.base_metrics.get("premise"))
        for callback in self._soft_callback_list():
            callback.on_soft_begin(self.args, state)
        return state

    def _finish(self, state: SOFTState) -> None:
        """Load the final round's weights (the last decision's final round, see `decision.py`), save them as the final
        model with its model card, and write the run summary and reports."""
        if state.final_round != self._current_round:
            self._load_round_weights(state.final_round)
        state.interpolated_by = self.settings.acceptance.interpolation_for(state.final_round)
        final_dir = self.store.save_final_model(self.save_model, state.interpolated_by)
        if state.interpolated_by:  # the model in memory, the engine and `push_to_hub` hold what the folder holds
            self._load_round_weights(state.final_round, final_dir)
        state.confirmation = self.behaviour.confirm(state.final_round, self.engine.generate, state.base_metrics)
        if is_main_process():
            self.store.save_manifest()
            with self.folder.hf_output(self.args, final_dir):  # the model card belongs next to the final weights
                self.create_model_card(model_name=self.soft_output_dir.name)
            reports = write_reports(self.soft_output_dir, state)  # summary.md; with matplotlib, plots and HTML
            say(printed_summary(state, str(self.soft_output_dir), reports))
        wait_for_everyone()

    def _soft_callback_list(self) -> list[SOFTCallback]:
        return [c for c in self.callback_handler.callbacks if isinstance(c, SOFTCallback)]

    # ---- hooks of the HF Trainer --------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        """With a curriculum on, the round's training order (`Round.train_order`); else the Trainer's shuffle."""
        round_ = getattr(self, "round", None)  # None while the HF Trainer is being built
        order = round_.sampler_order() if round_ is not None and self.settings.curriculum.on else None
        return CurriculumSampler(order) if order is not None else super()._get_train_sampler(train_dataset)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, made to load and given this run's SOFT settings and round table (`complete_model_card`)."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            complete_model_card(Path(self.args.output_dir), self.model, self.args.hub_model_id or self.args.output_dir,
                                getattr(self, "soft_state", None), self.settings.fingerprint())

    def push_to_hub(self, *args, **kwargs):
        """Push the final model (not the per-round folders) under the run's name."""
        if self.args.hub_model_id is None:
            self.args.hub_model_id = self.soft_output_dir.name
        with self.folder.hf_output(self.args, self.soft_output_dir / FINAL_MODEL):
            return super().push_to_hub(*args, **kwargs)

    # ---- the run's folder, checkpoints and weights -----------------------------------------------------------------
    def _check_run_folder(self, args: SOFTConfig, resume: bool) -> None:
        """Lock `output_dir` and check what it holds against this run (`RunFolder.check`): from `__init__`, and when
        `train()` starts, which knows whether it resumes."""
        rounds = args.settings.rounds
        self.folder.check(self.soft_fingerprint, self.soft_config_hash, rounds.overwrite_output_dir, resume,
                          self.inputs.same_prompts(rounds, args.seed))

    def __del__(self):
        if "folder" in self.__dict__:
            self.folder.release()

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then a completion mark (with the loss summed so far): a checkpoint a kill
        interrupted has none, and is skipped and removed; `train_loss` survives a resume from a marked one."""
        super()._save_checkpoint(model, trial)
        pending = self.accelerator.gather(self._tr_loss.detach().reshape(1)).mean().item()
        if is_main_process():
            self.folder.mark_checkpoint(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}",
                                        self.state.global_step, self._total_loss_scalar + pending)

    def _issue_warnings_after_load(self, load_result) -> None:
        """A round's weights must load whole (`models.check_load_result`)."""
        models.check_load_result(self.model, load_result)
        super()._issue_warnings_after_load(load_result)

    def _load_round_weights(self, round_index: int, folder: Path | None = None) -> None:
        """Round `round_index`'s saved weights, or those of the final model made from it (`folder`)."""
        self._load_from_checkpoint(str(folder or self.store.saved_model(round_index)))
        self.engine.use_round(round_index, folder)
        self._current_round = round_index
