"""The round loop end to end on a tiny random Llama with the real SmolLM2 tokenizer and TRL's real SFTTrainer."""

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_soft import SOFTRoundError, SOFTTrainer
from trl_soft.generation import GenerationSettings, generate_completions
from trl_soft.rounds import Round
from trl_soft.state import SOFTState, read_jsonl, round_paths

from .conftest import DATA, make_tiny_llama, needs_data, prompt_dataset, tiny_config


def _run(tmp_path, tokenizer, callbacks=None, resume=False, **overrides):
    trainer = SOFTTrainer(
        model=make_tiny_llama(tokenizer),
        args=tiny_config(tmp_path / "out", **overrides),
        train_dataset=prompt_dataset(12),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _regenerate(model, trainer, rows):
    """Greedy regeneration of a round's prompts with the exemplars recorded for them."""
    by_id = {e.id: e for e in trainer.exemplars}
    texts = [trainer.formatter.generation_prompt(r["prompt"], [by_id[i] for i in r["exemplar_ids"]]) for r in rows]
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, batch_size=4,
                                  stop_strings=trainer.formatter.stop_strings)
    return [g.text for g in generate_completions(model, trainer.processing_class, texts, settings)]


def test_two_rounds_write_artifacts_and_round_two_uses_the_round_one_model(tmp_path, tokenizer):
    trainer = _run(tmp_path, tokenizer)
    out = tmp_path / "out"
    state = SOFTState.load(out)
    assert state.rounds_completed == 2 and [m["round"] for m in state.history] == [1, 2]
    assert state.base_metrics["validation_nll"] > 0
    for t in (1, 2):
        rows = read_jsonl(out / f"round_{t}" / "generations.jsonl")
        assert len(rows) == 6
        assert {"prompt", "exemplar_ids", "raw_output", "response", "kept", "filter_reason"} <= rows[0].keys()
        metrics = json.loads((out / f"round_{t}" / "metrics.json").read_text())
        assert metrics["kept"] == sum(r["kept"] for r in rows)
        assert metrics["validation_nll"] > 0 and metrics["train_loss"] > 0
        assert (out / f"round_{t}" / "model" / "model.safetensors").is_file()
    assert (out / "final_model" / "model.safetensors").is_file()
    assert "## SOFT rounds" in (out / "final_model" / "README.md").read_text()
    assert "| round |" in (out / "summary.md").read_text()
    prompts_1 = {r["prompt"] for r in read_jsonl(out / "round_1" / "generations.jsonl")}
    prompts_2 = {r["prompt"] for r in read_jsonl(out / "round_2" / "generations.jsonl")}
    assert not prompts_1 & prompts_2  # fresh disjoint chunks

    # Round 2's data came from the round-1 model: regenerating with it reproduces round 2's outputs exactly,
    # while the untrained base model answers differently.
    rows_2 = read_jsonl(out / "round_2" / "generations.jsonl")
    round_1_model = AutoModelForCausalLM.from_pretrained(out / "round_1" / "model")
    assert _regenerate(round_1_model, trainer, rows_2) == [r["raw_output"] for r in rows_2]
    assert _regenerate(make_tiny_llama(tokenizer), trainer, rows_2) != [r["raw_output"] for r in rows_2]


def test_curriculum_orders_training_easy_to_hard(tmp_path, tokenizer):
    trainer = _run(tmp_path, tokenizer, num_rounds=1, generation_temperature=1.0, generation_max_new_tokens=16)
    rows = [r for r in read_jsonl(tmp_path / "out" / "round_1" / "generations.jsonl") if r["kept"]]
    ordered = sorted(rows, key=lambda r: r["train_position"])
    assert [r["difficulty"] for r in ordered] == sorted(r["difficulty"] for r in rows)
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == "CurriculumSampler"
    kept_in_generation_order = [r["train_position"] for r in rows]
    assert list(sampler) == sorted(range(len(rows)), key=lambda i: kept_in_generation_order[i])


class _CrashAtRoundTwo(TrainerCallback):
    """Simulates an interruption: the second `train()` call (round 2) dies as it starts."""

    def __init__(self):
        self.calls = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt("simulated crash in round 2")


def test_resume_after_a_completed_round_skips_it(tmp_path, tokenizer):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tokenizer, callbacks=[_CrashAtRoundTwo()])
    out = tmp_path / "out"
    assert SOFTState.load(out).rounds_completed == 1
    round_1 = (out / "round_1" / "generations.jsonl").stat().st_mtime_ns
    round_1_model = (out / "round_1" / "model" / "model.safetensors").read_bytes()

    with pytest.raises(ValueError, match="resume"):  # neither resume nor overwrite: refused
        _run(tmp_path, tokenizer)

    resumed = _run(tmp_path, tokenizer, resume=True)
    state = SOFTState.load(out)
    assert state.rounds_completed == 2
    assert (out / "round_1" / "generations.jsonl").stat().st_mtime_ns == round_1  # not regenerated
    assert (out / "round_1" / "model" / "model.safetensors").read_bytes() == round_1_model
    assert resumed.state.global_step > 0  # round 2 trained in the resumed run

    # The resumed run continued from round 1's weights: it matches an uninterrupted run.
    reference = _run(tmp_path / "ref", tokenizer)
    reference_nll = SOFTState.load(tmp_path / "ref" / "out").history[1]["validation_nll"]
    assert state.history[1]["validation_nll"] == pytest.approx(reference_nll, rel=1e-4)
    del reference


class _FilterEverythingAfterRoundOne(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        strict = replace(args.settings.filters, names=("too_short",), min_words=10_000)
        args.settings = replace(args.settings, filters=strict)


def test_a_round_with_every_answer_filtered_stops_and_keeps_earlier_rounds(tmp_path, tokenizer):
    with pytest.raises(SOFTRoundError, match="filtered out"):
        _run(tmp_path, tokenizer, callbacks=[_FilterEverythingAfterRoundOne()])
    out = tmp_path / "out"
    assert SOFTState.load(out).rounds_completed == 1
    assert (out / "round_1" / "model" / "model.safetensors").is_file()
    rows = read_jsonl(out / "round_2" / "generations.jsonl")
    assert rows and not any(r["kept"] for r in rows)
    assert {r["filter_reason"] for r in rows} <= {"too_short", "empty"}


class _RecordStartWeights(TrainerCallback):
    """Copies the weights each round's fine-tuning starts from."""

    def __init__(self):
        self.starts = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.starts.append({n: p.detach().clone() for n, p in model.named_parameters()})


@pytest.mark.parametrize("round_init", ["previous", "base"])
def test_round_init_sets_where_fine_tuning_starts(tmp_path, tokenizer, round_init):
    recorder = _RecordStartWeights()
    _run(tmp_path, tokenizer, callbacks=[recorder], round_init=round_init)
    base = dict(make_tiny_llama(tokenizer).named_parameters())
    round_1 = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "round_1" / "model").named_parameters())
    expected = base if round_init == "base" else round_1
    assert all(torch.equal(recorder.starts[0][n], base[n]) for n in base)
    assert all(torch.allclose(recorder.starts[1][n], expected[n]) for n in expected)
    assert not all(torch.allclose(round_1[n], base[n]) for n in base)


@needs_data
def test_benchmarks_are_scored_before_and_after_every_round(tmp_path, tokenizer):
    _run(tmp_path, tokenizer, num_rounds=1, benchmarks=["truthfulqa_mc1", "truthfulqa_mc2", "hhh"],
         benchmark_limit=2, benchmark_data_dir=str(DATA))
    state = SOFTState.load(tmp_path / "out")
    for metrics in (state.base_metrics, state.history[0]):
        assert 0 <= metrics["truthfulqa_mc1"] <= 1 and 0 <= metrics["truthfulqa_mc2"] <= 1
        assert set(metrics) >= {"hhh_harmless", "hhh_helpful", "hhh_honest", "hhh_other", "hhh_overall",
                                "hhh_acc_norm_overall", "seconds_benchmarks"}
    assert "TQA MC1" in (tmp_path / "out" / "summary.md").read_text()


def _kept_rows(tmp_path):
    return [r for r in read_jsonl(tmp_path / "out" / "round_1" / "generations.jsonl") if r["kept"]]


def test_perplexity_curriculum_scores_with_the_model_that_wrote_the_answers(tmp_path, tokenizer):
    from trl_soft import SCORERS, ScoringContext

    trainer = _run(tmp_path, tokenizer, num_rounds=1, curriculum="perplexity", generation_temperature=1.0,
                   generation_max_new_tokens=16)
    rows = _kept_rows(tmp_path)
    writer = make_tiny_llama(tokenizer)  # the round-1 data was generated by the untrained model
    context = ScoringContext(tokenizer=tokenizer, model=writer, formatter=trainer.formatter)
    expected = SCORERS["perplexity"]([r["prompt"] for r in rows], [r["response"] for r in rows], context)
    assert [r["difficulty"] for r in rows] == pytest.approx(expected, rel=1e-4)
    ordered = sorted(rows, key=lambda r: r["train_position"])
    assert [r["difficulty"] for r in ordered] == sorted(r["difficulty"] for r in rows)
    assert trainer.soft_state.history[0]["seconds_score"] >= 0


def test_column_curriculum_uses_the_prompt_rows(tmp_path, tokenizer):
    trainer = SOFTTrainer(
        model=make_tiny_llama(tokenizer),
        args=tiny_config(tmp_path / "out", num_rounds=1, curriculum="column", curriculum_column="level"),
        train_dataset=prompt_dataset(12).add_column("level", [float(-i) for i in range(12)]),
        processing_class=tokenizer,
    )
    trainer.train()
    rows = _kept_rows(tmp_path)
    assert [r["difficulty"] for r in rows] == [-float(r["prompt_index"]) for r in rows]
    first = min(rows, key=lambda r: r["train_position"])
    assert first["prompt_index"] == max(r["prompt_index"] for r in rows)


def test_custom_scorer_descending_with_buckets(tmp_path, tokenizer):
    from trl_soft.curriculum import curriculum_order

    def characters(prompts, responses, context):
        return [len(r) for r in responses]

    args = tiny_config(tmp_path / "out", num_rounds=1, curriculum="custom", curriculum_direction="descending",
                       curriculum_bucket_size=2, generation_temperature=1.0, generation_max_new_tokens=16)
    trainer = SOFTTrainer(model=make_tiny_llama(tokenizer), args=args, train_dataset=prompt_dataset(12),
                          processing_class=tokenizer, difficulty_scorer=characters)
    trainer.train()
    rows = _kept_rows(tmp_path)
    assert [r["difficulty"] for r in rows] == [float(len(r["response"])) for r in rows]
    expected = curriculum_order([r["difficulty"] for r in rows], descending=True, bucket_size=2, seed=args.seed + 1)
    assert [r["train_position"] for r in rows] == [expected.index(i) for i in range(len(rows))]
    assert list(trainer._get_train_sampler()) == expected


def test_the_prefix_rule_trains_a_cut_answer_without_its_end_of_turn(tmp_path, tokenizer):
    """`filter_truncation='prefix'`: an answer cut at the token budget is trained as the start of an answer, so the
    round does not teach the model to stop where the budget stopped it; a finished answer still ends its turn."""
    trainer = _run(tmp_path, tokenizer, num_rounds=1, filter_truncation="prefix")
    round_ = Round(2, round_paths(tmp_path / "out", 2), 7, [0, 1], ["Say hi.", "Count to three."], [[], []],
                   raw_outputs=["Hi there.", "One. Two. Thr"], responses=["Hi there.", "One. Two."],
                   num_tokens=[3, 4], finished=[True, False], filter_reasons=[None, None], cut=[False, True])
    trainer.round = round_  # what the round loop sets before training (the sampler reads its order)
    trainer._train_round(round_, None)
    finished, cut = trainer.train_dataset[0]["labels"], trainer.train_dataset[1]["labels"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in finished[-2:]  # the finished answer is taught to end its turn
    assert end not in cut and cut[-2:] == [-100, -100]  # the cut one is not
    last = max(k for k, label in enumerate(cut) if label != -100)
    assert tokenizer.decode(cut[last]).strip() == "."  # its text, to the last sentence's end, is still learned
    assert trainer.formatter.without_answer_end(finished) == finished[:-2] + [-100, -100]
