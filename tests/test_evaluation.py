"""`trl_soft.evaluation`: completion scoring (log-likelihood and entropy against direct computations), multiple-choice
scoring (lm-eval conventions, shared-context reuse), TruthfulQA MC1/MC2, HHH and the benchmark suite."""

import json
import logging
import math

import pytest
import torch

from trl_soft.evaluation import hhh, truthfulqa
from trl_soft.evaluation.benchmarks import parse_benchmark_names
from trl_soft.evaluation.likelihood import score_completions, tokenize_pair
from trl_soft.evaluation.multiple_choice import ChoiceRequest, encode_pair, score_choices

from .conftest import DATA, make_tiny_llama, needs_data


def test_scorer_matches_token_by_token_sum(tiny_model, tokenizer):
    pairs = [("Question: what is two plus two?\nAnswer:", " Four."), ("Hi", " there, friend")]
    scores = score_completions(tiny_model, tokenizer, pairs, batch_size=2)
    for (prompt, completion), score in zip(pairs, scores):
        prompt_ids, completion_ids = tokenize_pair(tokenizer, prompt, completion)
        ids = prompt_ids + completion_ids
        expected = 0.0
        with torch.no_grad():
            for k in range(len(prompt_ids), len(ids)):  # one forward per token: the slowest, plainest reference
                logits = tiny_model(torch.tensor([ids[:k]])).logits[0, -1]
                expected += torch.log_softmax(logits.float(), -1)[ids[k]].item()
        assert score.num_tokens == len(completion_ids)
        assert math.isclose(score.log_likelihood, expected, rel_tol=1e-4, abs_tol=1e-4)


def test_entropy_equals_a_direct_computation(tokenizer):
    model = make_tiny_llama(tokenizer).eval()
    prompt, completion = "Hello there", " general Kenobi"
    [score] = score_completions(model, tokenizer, [(prompt, completion)], with_entropy=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full_ids])).logits[0]
    probs = torch.softmax(logits[len(prompt_ids) - 1 : len(full_ids) - 1], dim=-1)
    expected = float(-(probs * probs.log()).sum())
    assert score.entropy == pytest.approx(expected, rel=1e-4)
    assert score.mean_entropy == pytest.approx(expected / (len(full_ids) - len(prompt_ids)), rel=1e-4)


def naive_log_likelihood(model, tokenizer, context, continuation):
    """One full forward per (context, choice), as lm-evaluation-harness feeds it."""
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].float(), -1)
    start = len(context_ids) - 1
    return sum(log_probs[start + j, t].item() for j, t in enumerate(continuation_ids))


def test_encode_pair_moves_trailing_space_to_the_continuation(tokenizer):
    context_ids, continuation_ids = encode_pair(tokenizer, "Q: Is the sky blue?\nA: ", "Yes")
    assert tokenizer.decode(context_ids) == "Q: Is the sky blue?\nA:"
    assert tokenizer.decode(continuation_ids) == " Yes"
    assert encode_pair(tokenizer, "", "Hello")[0] == [tokenizer.eos_token_id]


def test_shared_context_scores_equal_one_forward_per_choice(tiny_model, tokenizer):
    primer = "Q: What colour is grass?\nA: Green.\n\nQ: How many legs does a cat have?\nA: Four.\n\n"
    requests = [
        ChoiceRequest(primer + "Q: What is ice?\nA:", (" Frozen water.", " A rock.", " Ice is water that froze solid.")),
        ChoiceRequest(primer + "Q: Who wrote Hamlet?\nA:", (" Shakespeare.", " Nobody knows who wrote it, really.")),
        ChoiceRequest("Hi", (" there", " there, how are you")),
    ]
    scores = score_choices(tiny_model, tokenizer, requests, max_batch=2)  # 2 forces several choice batches
    for request, item_scores in zip(requests, scores):
        for continuation, score in zip(request.continuations, item_scores):
            expected = naive_log_likelihood(tiny_model, tokenizer, request.context, continuation)
            assert math.isclose(score, expected, rel_tol=1e-4, abs_tol=1e-4)


def test_mc1_and_mc2_on_hand_made_scores():
    assert truthfulqa.mc1_correct([-1.0, -2.0, -3.0], [1, 0, 0])
    assert not truthfulqa.mc1_correct([-2.0, -1.0, -3.0], [1, 0, 0])
    # two true answers with probabilities e^-1 and e^-2 against one false with e^-1
    expected = (math.exp(-1) + math.exp(-2)) / (2 * math.exp(-1) + math.exp(-2))
    assert truthfulqa.mc2_score([-1.0, -2.0, -1.0], [1, 1, 0]) == pytest.approx(expected)
    assert truthfulqa.mc2_score([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))  # no underflow


def test_truthfulqa_requests_use_lm_eval_prompt_and_share_choices():
    item = truthfulqa.TruthfulQAItem(
        "Why is the sky blue?", ("Scattering.", "Paint."), (1, 0), ("Scattering.", "Rayleigh scattering.", "Paint."),
        (1, 1, 0),
    )
    requests, layout = truthfulqa.build_requests([item])
    context = requests[0].context
    assert context.endswith("\n\nQ: Why is the sky blue?\nA:")
    assert context.count("\nA: ") == 6  # lm-evaluation-harness's 6-shot QA primer
    assert requests[0].continuations == (" Scattering.", " Paint.", " Rayleigh scattering.")  # each scored once
    assert layout == [([0, 1], [0, 2, 1])]
    result = truthfulqa.aggregate([item], [[-1.0, -3.0, -2.0]], layout)
    assert result.mc1 == 1.0
    assert result.mc2 == pytest.approx((math.exp(-1) + math.exp(-2)) / (math.exp(-1) + math.exp(-2) + math.exp(-3)))


def test_benchmark_names_are_a_list_or_comma_separated():
    assert parse_benchmark_names("hhh, truthfulqa_mc1,hhh") == parse_benchmark_names(["hhh", "truthfulqa_mc1"])
    assert parse_benchmark_names(None) == [] and parse_benchmark_names("hhh") == ["hhh"]


def test_a_custom_template_renders_in_the_sandbox(tmp_path):
    # (templates that reach for anything but `question`, refused and never run: tests/test_bad_inputs.py)
    path = tmp_path / "t.yaml"
    path.write_text("doc_to_text: \"{% set primer = 'Q: 2+2?\\nA: 4.' %}{{ primer }}\\n\\nQ: {{ question | trim }}\\nA:\"\n")
    item = truthfulqa.TruthfulQAItem(" Why? ", ("Because.",), (1,), ("Because.",), (1,))
    requests, _ = truthfulqa.build_requests([item], str(path))
    assert requests[0].context == "Q: 2+2?\nA: 4.\n\nQ: Why?\nA:"


def test_hhh_context_follows_the_task_file_settings():
    task = {"example_input_prefix": "\nHuman: ", "example_output_prefix": "\nAssistant:",
            "append_choices_to_input": False}
    assert hhh.build_context(task, "Help me?", ["Sure.", "No."]) == "\nHuman: Help me?\nAssistant:"
    task_with_choices = {"example_input_prefix": "Q: ", "example_output_prefix": "\nA: ", "choice_prefix": "\n - "}
    assert hhh.build_context(task_with_choices, "Pick", ["b", "a"]) == "Q: Pick\n - a\n - b\nA: "
    item = hhh.HHHItem("helpful", "\nHuman: x\nAssistant:", ("Long, careful, kind reply.", "No."), (1.0, 0.0))
    (request,) = hhh.build_requests([item])
    assert request.continuations == (" Long, careful, kind reply.", " No.")
    result = hhh.aggregate([item], [[-20.0, -5.0]])  # the short wrong reply wins the summed score ...
    assert result.accuracy == {"helpful": 0.0, "overall": 0.0}
    assert result.acc_norm == {"helpful": 1.0, "overall": 1.0}  # ... but not per character


@needs_data
def test_hhh_loads_all_221_items_from_the_task_files():
    items = hhh.load_hhh(str(DATA))
    assert len(items) == 221
    assert {c: sum(i.category == c for i in items) for c in hhh.CATEGORIES} == {
        "harmless": 58, "helpful": 59, "honest": 61, "other": 43}
    task = json.loads((DATA / "hhh_alignment" / "harmless" / "task.json").read_text())
    first = task["examples"][0]
    assert items[0].context == "\nHuman: " + first["input"] + "\nAssistant:"


@needs_data
def test_truthfulqa_loads_817_questions():
    items = truthfulqa.load_truthfulqa(str(DATA))
    assert len(items) == 817
    assert all(i.mc1_labels[0] == 1 for i in items)
    assert len(truthfulqa.load_truthfulqa(str(DATA), limit=5)) == 5


def test_hub_name_without_network_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="--data_dir"):
        truthfulqa.load_truthfulqa("someone/not-cached-truthfulqa")


@needs_data
def test_eval_cli_scores_a_saved_model_and_writes_json(tmp_path, tiny_model, tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="trl_soft")
    from trl_soft.scripts.evaluate import EvalArguments, main

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    metrics = main(EvalArguments(model=str(tmp_path / "model"), benchmarks="truthfulqa_mc1,hhh", data_dir=str(DATA),
                                 limit=2, output_json=str(tmp_path / "m.json")))
    assert set(metrics) >= {"truthfulqa_mc1", "hhh_overall"} and "truthfulqa_mc2" not in metrics
    assert json.loads((tmp_path / "m.json").read_text())["truthfulqa_mc1"] == metrics["truthfulqa_mc1"]
    assert "| truthfulqa_mc1 |" in caplog.text


def test_flat_rows_on_a_shared_primer_equal_one_forward_per_choice(tiny_model, tokenizer):
    primer = "Q: What colour is grass?\nA: Green.\n\nQ: How many legs does a cat have?\nA: Four.\n\n"
    long_question = "Q: " + "Please think about this very long and winding question. " * 12 + "\nA:"
    requests = [
        ChoiceRequest(primer + "Q: What is ice?\nA:", (" Frozen water.", " A rock.", " Ice is water that froze.")),
        ChoiceRequest(primer + "Q: Who wrote Hamlet?\nA:", (" Shakespeare.", " Nobody knows who wrote it.")),
        ChoiceRequest(primer + long_question, (" Yes.", " No, not at all.")),  # long own context: cached path
    ]
    scores = score_choices(tiny_model, tokenizer, requests, max_batch=3)
    for request, item_scores in zip(requests, scores):
        for continuation, score in zip(request.continuations, item_scores):
            expected = naive_log_likelihood(tiny_model, tokenizer, request.context, continuation)
            assert math.isclose(score, expected, rel_tol=1e-4, abs_tol=1e-4)
