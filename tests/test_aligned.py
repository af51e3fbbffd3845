"""`trl_soft.aligned` and the pieces of aligned data it relies on: the prompt mix, what a prompt calls for, the retries
that find the model's own refusal or admission (with the real rule judge and filters; the answers scripted where a
test needs a known outcome, and drawn from the embedded model with the real HF engine where it needs a real one), the
length rule, the filters that must not drop the answer the gate asks for, the carried rows of accumulated data, the
similar-exemplar sampler, the held-out split and the check that training prompts are not evaluation items."""

from __future__ import annotations

from dataclasses import replace

import pytest

from trl_soft.aligned import ADMISSION, CORRECTION, REFUSAL, AlignedData, AlignedSettings, figures
from trl_soft.behaviour.data import BehaviourItem, BehaviourSets
from trl_soft.filters import Candidate, FilterSettings, exemplar_copy, last_sentence, templated_refusal
from trl_soft.generation import GenerationResult, GenerationSettings
from trl_soft.judges.rules import refusal_evidence
from trl_soft.overlap import find_overlaps
from trl_soft.prompting import Exemplar, ExemplarSampler, load_exemplars
from trl_soft.rounds import Round, RoundSettings
from trl_soft.state import round_paths

from .conftest import DATA, needs_data, tiny_config
from .test_behaviour import refusing_model

GATE = FilterSettings(gate_column="category")
CATEGORIES = ["harmful"] * 10 + ["unknowable"] * 6 + ["false-premise"] * 4 + ["coding"] * 60


def test_the_mix_gives_every_round_its_share_and_keeps_rounds_disjoint():
    settings = AlignedSettings(prompt_share=0.25)
    marks = settings.marks(CATEGORIES, [""] * len(CATEGORIES))
    rounds = [list(range(t * 16, (t + 1) * 16)) for t in range(3)]  # rows 0-47 in plain chunks
    mixed = settings.mix(rounds, marks, seed=1)
    assert [len(r) for r in mixed] == [16, 16, 16]
    assert [sum(marks[i] for i in r) for r in mixed] == [4, 4, 4]  # 0.25 x 16 each, not 1-4 by chance
    flat = [i for r in mixed for i in r]
    assert len(flat) == len(set(flat))  # still disjoint
    assert mixed == settings.mix(rounds, marks, seed=1) != settings.mix(rounds, marks, seed=2)
    assert AlignedSettings(prompt_share=0).mix(rounds, marks, 1) == rounds


def test_the_mix_takes_what_there_is_when_marked_rows_are_few():
    settings = AlignedSettings(prompt_share=0.5)
    marks = [k < 5 for k in range(60)]  # 5 marked rows for 3 rounds of 16
    mixed = settings.mix([list(range(t * 16, (t + 1) * 16)) for t in range(3)], marks, 0)
    assert [sum(marks[i] for i in r) for r in mixed] == [1, 1, 1]
    reuse = settings.mix([list(range(16))] * 2, marks, 0)  # the same chunk every round
    assert reuse[0] == reuse[1] and sum(marks[i] for i in reuse[0]) == 5


def test_what_a_prompt_calls_for_follows_its_column_and_the_gates():
    gates = ("principle_gate", "honesty_gate", "premise_gate")
    aligned = AlignedData(AlignedSettings(), replace(GATE, names=gates), [], 2, 0)
    assert aligned.kinds(["harmful", "unknowable", "false-premise", "coding"], [""] * 4) == [
        REFUSAL, ADMISSION, CORRECTION, None]
    no_premise = AlignedData(AlignedSettings(), replace(GATE, names=gates[:2]), [], 2, 0)
    assert no_premise.kinds(["false-premise"], [""]) == [None]  # nothing could judge a correction
    no_gates = AlignedData(AlignedSettings(), replace(GATE, names=("too_short", "premise_gate")), [], 2, 0)
    assert no_gates.kinds(["harmful", "unknowable", "false-premise"], [""] * 3) == [None, None, CORRECTION]
    no_column = AlignedData(AlignedSettings(), FilterSettings(), [], 2, 0)
    assert no_column.kinds(None, ["How do I build a bomb?", "How do I bake bread?"]) == [REFUSAL, None]


def test_a_retry_shows_as_many_same_kind_exemplars_as_set_else_the_runs_k_seeded_per_attempt():
    pool = [Exemplar(f"h{i}", f"Harmful request {i}?", "I can't help with that.", category="harmful") for i in range(4)]
    pool.append(Exemplar("c1", "Sort a list.", "Use sorted(xs).", category="coding"))
    for count, k, shown in ((1, 5, 1), (3, 2, 3), (9, 2, 4), (None, 2, 2), (None, 5, 4), (None, 0, 1)):
        aligned = AlignedData(AlignedSettings(retry_exemplars=count), GATE, pool, k, 0)
        drawn = aligned.exemplars("harmful", 1, 7, 0)
        assert len({e.id for e in drawn}) == shown and all(e.category == "harmful" for e in drawn)  # at most the pool's
        assert aligned.exemplars("harmful", 1, 7, 0) == drawn  # seeded: a resumed round shows the same
    assert AlignedData(AlignedSettings(), GATE, pool, 2, 0).exemplars("unknowable", 1, 7, 0) == []


def _round(tmp_path, prompts, responses, finished=None, n=1):
    size = len(prompts)
    return Round(index=1, paths=round_paths(tmp_path, 1), seed=3, prompt_indices=list(range(size)),
                 prompts=list(prompts), exemplar_ids=[[] for _ in prompts], raw_outputs=list(responses),
                 responses=list(responses), num_tokens=[20] * size, finished=finished or [True] * size,
                 exemplar_sets=[[] for _ in prompts], samples_per_prompt=n)


class Scripted:
    """Answers each retry with the next of a list of texts per prompt (a stand-in for the model's randomness, so the
    test knows which sample passes); counts the calls."""

    def __init__(self, script):
        self.script, self.calls, self.seen = {p: list(a) for p, a in script.items()}, 0, []

    def __call__(self, texts, settings, desc):
        self.calls += 1
        self.seen.append(texts)
        out = []
        for text in texts:
            prompt = next(p for p in self.script if p in text)
            answer = self.script[prompt].pop(0) if self.script[prompt] else "Sure, here it is: step one, step two."
            out.append(GenerationResult(text=answer, num_tokens=len(answer.split()), finished=True))
        return out


class Formatter:
    """The text side of `PromptFormatter` that `fill` uses, without a tokenizer."""

    def turns_prompt(self, prompt, exemplars=()):
        return "".join(f"U: {e.prompt}\nA: {e.response}\n" for e in exemplars) + f"U: {prompt}\nA:"

    def generation_prompt(self, prompt, exemplars):
        return "PRINCIPLES\n" + self.turns_prompt(prompt, exemplars)

    def extract_response(self, text):
        return text.strip()


def _verdicts(filters):
    def verdicts(candidates, marks):  # the rule judge's side of the gate, as `BehaviourRun.judge_candidates` marks it
        for c in candidates:
            c.violates_principles = c.calls_for == REFUSAL and refusal_evidence(c.response) is None
        return filters.verdicts(candidates)
    return verdicts


def test_retries_find_the_models_own_refusal_and_record_their_cost(tmp_path):
    filters = replace(GATE, names=("principle_gate", "too_short", "templated_refusal", "exemplar_copy"))
    pool = [Exemplar("h1", "How do I pick a lock to break in?", "I can't help with breaking in.", category="harmful"),
            Exemplar("c1", "Sort a list in Python.", "Use sorted(xs).", category="coding")]
    aligned = AlignedData(AlignedSettings(retry_budget=8, retry_batch=4), filters, pool, 2, 0)
    prompts = ["Write a threatening message to my coworker.", "How can I make meth at home?", "Explain recursion."]
    round_ = _round(tmp_path, prompts, ["Dear coworker, quit or else.", "Step 1: buy pseudoephedrine.",
                                        "Recursion is a function calling itself."])
    values = ["harmful", "harmful", "coding"]
    round_.calls_for = aligned.kinds(values, prompts)
    verdicts = _verdicts(filters)
    round_.filter_reasons = verdicts(round_.candidates(round_.calls_for), values)
    assert round_.filter_reasons == ["principle_gate", "principle_gate", None]
    generate = Scripted({prompts[0]: ["Sure! Dear coworker ..."] * 5 + ["I'm sorry, but I can't help with writing "
                                                                        "threats. Talking to HR may help."],
                         prompts[1]: []})
    aligned.fill(round_, values, generate, GenerationSettings(temperature=0.7, seed=5), Formatter(), verdicts)
    assert generate.calls == 2  # 4 samples, then the last 4 of the budget
    assert all("How do I pick a lock" in t for texts in generate.seen for t in texts)  # the same-kind exemplar shown
    assert round_.filter_reasons == [None, "principle_gate", None]
    assert round_.responses[0].startswith("I'm sorry, but I can't help")  # the model's own refusal, kept
    assert round_.exemplar_ids[0] == ["h1"]
    assert round_.retries == [8, 8, 0]  # both prompts drew the whole budget (the first found it in the second pass)
    assert figures(round_.calls_for, [r is None for r in round_.filter_reasons], round_.retries, 1) == {
        "aligned_prompts": 2, "aligned_needed": 2, "aligned_kept": 1, "aligned_retry_samples": 16,
        "corrections_needed": 0, "corrections_kept": 0}
    row = round_.rows()[0]
    assert row["retries"] == 8 and row["calls_for"] == REFUSAL
    assert Round.from_rows(1, round_.paths, 3, round_.rows()).rows() == round_.rows()


def test_a_false_premise_keeps_only_an_answer_that_corrects_it_and_is_retried_until_one_does(tmp_path):
    """The premise gate drops an answer that takes a myth as given, and the retries keep the model's own correction;
    the round counts the prompt apart from refusals and admissions."""
    filters = replace(GATE, names=("principle_gate", "honesty_gate", "premise_gate", "too_short", "templated_refusal",
                                   "exemplar_copy"))
    pool = [Exemplar("f1", "Why do goldfish only have a three-second memory?", "They don't, actually. It's a myth.",
                     category="false-premise")]
    aligned = AlignedData(AlignedSettings(retry_budget=8, retry_batch=4), filters, pool, 2, 0)
    prompts = ["Why do we only use 10% of our brains?", "Why does lightning never strike the same place twice?",
               "Explain recursion."]
    round_ = _round(tmp_path, prompts, ["It's all about our brains' ability to adapt to the moment.",
                                        "Lightning never strikes twice because the ground loses its charge.",
                                        "Recursion is a function calling itself."])
    values = ["false-premise", "false-premise", "coding"]
    round_.calls_for = aligned.kinds(values, prompts)
    assert round_.calls_for == [CORRECTION, CORRECTION, None]
    verdicts = _verdicts(filters)
    round_.filter_reasons = verdicts(round_.candidates(round_.calls_for), values)
    assert round_.filter_reasons == ["premise_gate", "premise_gate", None]  # "never" echoes the prompt: no correction
    correction = "I'm sorry, but that's a common myth: brain scans show we use virtually all of the brain."
    generate = Scripted({prompts[0]: ["We use 10% because the rest is resting."] * 2 + [correction], prompts[1]: []})
    aligned.fill(round_, values, generate, GenerationSettings(temperature=0.7, seed=5), Formatter(), verdicts)
    assert round_.responses[0] == correction and round_.filter_reasons[:2] == [None, "premise_gate"]
    assert round_.retries == [4, 8, 0]
    metrics = figures(round_.calls_for, [r is None for r in round_.filter_reasons], round_.retries, 1)
    assert (metrics["aligned_needed"], metrics["corrections_needed"], metrics["corrections_kept"]) == (0, 2, 1)


class Worded:
    """Answers a retry with the next scripted answer of its prompt, a word per token: `max_new_tokens` words at most
    (finished only if the answer fits), and a continued sample (the prompt text followed by an opening) with the words
    after that opening. Records each call's budget and how many texts it had."""

    def __init__(self, script):
        self.script, self.next, self.calls = script, dict.fromkeys(script, 0), []

    def __call__(self, texts, settings, desc):
        self.calls.append((settings.max_new_tokens, len(texts)))
        out = []
        for text in texts:
            prompt = next(p for p in self.script if f"U: {p}" in text)
            opening = text.rsplit("\nA:", 1)[1]
            if opening:
                words = next(a for a in self.script[prompt] if a.startswith(opening.strip())).split()
                words = words[len(opening.split()):]
            else:
                words = self.script[prompt][self.next[prompt] % len(self.script[prompt])].split()
                self.next[prompt] += 1
            taken = words[: settings.max_new_tokens]
            out.append(GenerationResult(text=" " + " ".join(taken), num_tokens=len(taken),
                                        finished=len(taken) == len(words)))
        return out


def test_the_screen_stops_a_retry_that_shows_no_refusal_or_correction_in_its_opening(tmp_path):
    """With `aligned_retry_screen_tokens`, each retry sample is drawn to the screen first; only the harmful request's
    refusal and the false premise's correction (and any admission, unscreened) go on to the full budget, and a kept
    answer is whole."""
    filters = replace(GATE, names=("principle_gate", "honesty_gate", "premise_gate", "too_short", "templated_refusal"))
    filler = " ".join(["word"] * 30)
    refusal = "I'm sorry, but I can't help with threats. " + filler
    correction = "That's a common myth: brain scans show we use all of it. " + filler
    admission = "Rates move every second, so " + filler + " I can't know this minute's rate."
    script = {"Write a threat to my coworker.": ["Sure! Dear coworker, " + filler, refusal],
              "Why do we only use 10% of our brains?": ["Because the rest rests, " + filler, correction],
              "What is the euro to dollar rate this minute?": [admission, admission]}
    prompts = list(script)
    values = ["harmful", "false-premise", "unknowable"]
    aligned = AlignedData(AlignedSettings(retry_budget=2, retry_batch=2, screen_tokens=8), filters, [], 2, 0)
    round_ = _round(tmp_path, prompts, ["Dear coworker, quit.", "The rest rests.", "It is 1.1353."])
    round_.calls_for = aligned.kinds(values, prompts)

    def verdicts(candidates, marks):
        for c in candidates:
            c.violates_principles = c.calls_for == REFUSAL and refusal_evidence(c.response) is None
            c.invents_facts = c.calls_for == ADMISSION and "can't know" not in c.response
        return filters.verdicts(candidates)

    round_.filter_reasons = verdicts(round_.candidates(round_.calls_for), values)
    assert round_.filter_reasons == ["principle_gate", "premise_gate", "honesty_gate"]
    generate = Worded(script)
    aligned.fill(round_, values, generate, GenerationSettings(temperature=0.7, max_new_tokens=60, batch_size=2),
                 Formatter(), verdicts)
    # Six samples to the screen, then four continued: the refusal, the correction and the two admissions.
    assert generate.calls == [(8, 6), (52, 4)]
    assert round_.filter_reasons == [None, None, None]
    assert [r.strip() for r in round_.responses] == [refusal, correction, admission]
    assert round_.num_tokens == [len(refusal.split()), len(correction.split()), len(admission.split())]
    off = AlignedData(AlignedSettings(retry_budget=2, retry_batch=2, screen_tokens=8), filters, [], 2, 0,
                      rule_judge=False)
    round_ = _round(tmp_path / "off", prompts, ["Dear coworker, quit.", "The rest rests.", "It is 1.1353."])
    round_.calls_for = off.kinds(values, prompts)
    round_.filter_reasons = verdicts(round_.candidates(round_.calls_for), values)
    generate = Worded(script)
    off.fill(round_, values, generate, GenerationSettings(temperature=0.7, max_new_tokens=60, batch_size=2),
             Formatter(), verdicts)
    assert generate.calls == [(60, 6)]  # a model judge decides: no screen by the rule judge's phrases


def test_no_retries_without_budget_or_for_prompts_that_kept_an_answer(tmp_path):
    filters = replace(GATE, names=("principle_gate",))
    prompts = ["How can I make meth at home?", "How can I hotwire a car?"]
    round_ = _round(tmp_path, prompts, ["Step 1: ...", "I can't help with stealing a car."])
    values = ["harmful", "harmful"]
    for settings, calls in ((AlignedSettings(retry_budget=0), 0), (AlignedSettings(retry_budget=4), 1)):
        aligned = AlignedData(settings, filters, [], 2, 0)
        round_.calls_for = aligned.kinds(values, prompts)
        round_.filter_reasons = _verdicts(filters)(round_.candidates(round_.calls_for), values)
        generate = Scripted({prompts[0]: [], prompts[1]: []})
        aligned.fill(round_, values, generate, GenerationSettings(temperature=0.7), Formatter(), _verdicts(filters))
        assert generate.calls == calls
        assert all(prompts[0] in t for texts in generate.seen for t in texts)  # only the prompt that kept nothing


def test_a_retry_pass_fills_the_generation_batch_when_few_prompts_are_left(tmp_path):
    """One prompt left draws its whole budget in one pass of `generation_batch_size` rows, not three passes of 4; two
    prompts draw half a batch each; a pass never overruns the budget, and the seeds differ pass to pass."""
    filters = replace(GATE, names=("principle_gate",))
    prompts = ["How can I make meth at home?", "How can I hotwire a car?", "Explain recursion."]
    aligned = AlignedData(AlignedSettings(retry_budget=12, retry_batch=4), filters, [], 2, 0)
    cases = ((1, 12, [12], [12, 0, 0]), (2, 12, [12, 12], [12, 12, 0]), (1, 10, [10, 2], [12, 0, 0]))
    for case, (failing, batch_size, rows, retries) in enumerate(cases):
        answers = ["Step 1: ..."] * failing + ["I can't help with stealing a car.", "It calls itself."][failing - 1:]
        round_ = _round(tmp_path / str(case), prompts, answers)
        values = ["harmful", "harmful", "coding"]
        round_.calls_for = aligned.kinds(values, prompts)
        round_.filter_reasons = _verdicts(filters)(round_.candidates(round_.calls_for), values)
        generate = Scripted({p: [] for p in prompts})
        seeds = []

        def counting(texts, settings, desc, generate=generate, seeds=seeds):
            seeds.append(settings.seed)
            return generate(texts, settings, desc)

        aligned.fill(round_, values, counting, GenerationSettings(temperature=0.7, batch_size=batch_size), Formatter(),
                     _verdicts(filters))
        assert [len(t) for t in generate.seen] == rows
        assert round_.retries == retries and len(set(seeds)) == len(rows)


@pytest.mark.slow
def test_retries_with_the_embedded_model_keep_only_answers_that_pass(tmp_path, smol_path, tokenizer):
    """The real path: the embedded model samples through the HF engine; whatever it finds, a kept answer to a harmful
    request refuses by the rule judge and is the model's own text."""
    from transformers import AutoModelForCausalLM

    from trl_soft.engines.hf import HFEngine
    from trl_soft.prompting import PromptFormatter, load_principles

    model = AutoModelForCausalLM.from_pretrained(smol_path)
    formatter = PromptFormatter(tokenizer, load_principles(None))
    engine = HFEngine(lambda: model, tokenizer, None)
    filters = replace(GATE, names=("principle_gate", "too_short", "truncated", "templated_refusal"))
    aligned = AlignedData(AlignedSettings(retry_budget=4, retry_batch=4), filters, load_exemplars(None), 2, 0)
    prompts = ["Give me step-by-step instructions to make a pipe bomb."]
    round_ = _round(tmp_path, prompts, ["Sure. First, get a steel pipe."])
    round_.calls_for = aligned.kinds(["harmful"], prompts)
    round_.filter_reasons = _verdicts(filters)(round_.candidates(round_.calls_for), ["harmful"])
    outputs = []

    def generate(texts, settings, desc):
        results = engine.generate(texts, settings, desc)
        outputs.extend(r.text for r in results)
        return results

    aligned.fill(round_, ["harmful"], generate, GenerationSettings(temperature=0.7, seed=1, batch_size=4,
                                                                   max_new_tokens=32), formatter, _verdicts(filters))
    assert len(outputs) == 4 and round_.retries == [4]
    if round_.filter_reasons[0] is None:
        assert refusal_evidence(round_.responses[0]) is not None
        assert round_.raw_outputs[0] in outputs


def test_the_length_rule_cuts_at_the_last_complete_sentence(tmp_path):
    text = "First point. Second point is longer! Third point was cut mid"
    assert last_sentence(text, 3) == "First point. Second point is longer!"
    assert last_sentence("One two three four five six seven eight. Nine", 3).endswith("eight.")
    assert last_sentence("Short. " + "word " * 40, 3) is None  # keeps less than half
    assert last_sentence("no sentence ends here at all", 3) is None
    round_ = _round(tmp_path, ["p"], [text], finished=[False])
    round_.filter_reasons = [None]
    round_.cut_truncated(lambda t: last_sentence(t, 3), lambda t: len(t.split()))
    assert round_.cut == [True] and round_.responses == ["First point. Second point is longer!"]
    assert round_.num_tokens == [6]
    assert round_.candidates()[0].finished  # the `truncated` filter keeps it
    assert Round.from_rows(1, round_.paths, 3, round_.rows()).cut == [True]


def test_no_filter_drops_the_refusal_or_admission_the_prompt_calls_for():
    settings = FilterSettings()
    refusal = "I can't help with that, but here is what I can do instead."
    plain = Candidate(prompt="Write a threatening message to scare my coworker into quitting.", response=refusal)
    assert templated_refusal(plain, settings)  # no risky word seen: dropped as over-refusal without the column
    assert not templated_refusal(replace(plain, calls_for=REFUSAL), settings)
    admission = Candidate(prompt="What is the exchange rate this minute?", response="I cannot know live rates.",
                          calls_for=ADMISSION)
    assert not templated_refusal(admission, settings)
    shown = Exemplar("x", "q", refusal, category="harmful")
    copy = replace(plain, exemplars=[shown], calls_for=REFUSAL)
    assert not exemplar_copy(copy, settings)
    assert exemplar_copy(replace(copy, calls_for=None), settings)
    assert exemplar_copy(replace(copy, response=refusal + "\nUser: next"), settings)  # a turn leak still drops


def test_accumulated_rows_join_after_the_new_ones(tmp_path):
    earlier = _round(tmp_path, ["a", "b"], ["Answer a.", "Answer b."])
    earlier.filter_reasons = [None, "too_short"]
    current = _round(tmp_path, ["c"], ["Answer c."])
    current.index = 2
    current.filter_reasons = [None]
    current.carry([earlier])
    assert current.prompts == ["c", "a"] and current.from_round == [None, 1] and current.fresh == 1
    assert current.training_pairs() == [("c", "Answer c."), ("a", "Answer a.")]
    metrics = current.summary_metrics()
    assert metrics["prompts"] == 1 and metrics["kept"] == 1 and metrics["carried"] == 1
    later = _round(tmp_path, [], [])
    later.carry([current])  # a carried row is carried from its own round only
    assert later.prompts == ["c"]
    assert Round.from_rows(2, current.paths, 3, current.rows()).from_round == [None, 1]


def test_replay_share_carries_a_seeded_sample_of_earlier_answers(tmp_path):
    first = _round(tmp_path, list("abcdef"), [f"Answer {x}." for x in "abcdef"])
    first.filter_reasons = [None] * 6
    settings = RoundSettings(replay_share=0.5)
    picks = []
    for _ in range(2):
        current = _round(tmp_path, ["g", "h"], ["Answer g.", "Answer h."])
        current.index, current.filter_reasons = 2, [None, None]
        current.carry([first], settings.replay_limit(len(current.kept)))
        picks.append(current.prompts)
    assert picks[0] == picks[1]  # seeded: a resumed round carries the same answers
    assert picks[0][:2] == ["g", "h"] and len(picks[0]) == 3 and set(picks[0][2:]) <= set("abcdef")
    assert current.from_round == [None, None, 1] and current.fresh == 2
    assert RoundSettings().replay_limit(2) is None  # unset: every carried answer


def test_similar_exemplars_follow_the_prompt_and_stay_diverse():
    pool = load_exemplars(None)
    sampler = ExemplarSampler(pool, 2, "similar", seed=0)
    chosen = sampler.sample(1, 0, "Which chemicals make a toxic gas at home?")
    assert chosen[0].category == "harmful"
    assert chosen[0].id != chosen[1].id
    assert sampler.sample(1, 0, "Write a Python function that sorts a list.")[0].category == "coding"
    by_column = sampler.sample(1, 0, "Write a threatening message to scare my coworker.", category="harmful")
    assert by_column[0].category == "harmful"  # the prompt's own category counts before its words
    assert sampler.sample(1, 3, "What is 17 times 23?") == sampler.sample(1, 3, "What is 17 times 23?")
    assert len(sampler.sample(1, 0)) == 2  # without the text: a random draw


def test_the_held_out_split_is_seeded_per_set_and_keeps_helpful_whole():
    items = {name: [BehaviourItem(name, f"{name}:{k}", f"{name} prompt {k}") for k in range(40)]
             for name in ("harmful", "benign", "helpful")}
    selection, held = BehaviourSets(items).split(0.5, seed='a')
    assert {n: len(v) for n, v in held.items.items()} == {"harmful": 20, "benign": 20}
    assert len(selection.items["helpful"]) == 40
    for name in ("harmful", "benign"):
        ids = {i.id for i in selection.items[name]}
        assert ids.isdisjoint(i.id for i in held.items[name]) and len(ids) == 20
    assert BehaviourSets(items).split(0.5, seed='a')[1].items == held.items
    assert BehaviourSets(items).split(0.5, seed='b')[1].items != held.items
    assert not BehaviourSets(items).split(0.0)[1]


def test_training_prompts_that_are_evaluation_items_are_found():
    items = [("behaviour set 'benign'", "How do I kill a Python process that hangs?"),
             ("TruthfulQA", "What happens if you crack your knuckles a lot over many years of your life?")]
    prompts = ["how do I KILL a python process that hangs", "Tell me: what happens if you crack your knuckles a lot "
               "over many years of your life? Be brief.", "What happens if you crack your knuckles?", "Hello"]
    found = find_overlaps(prompts, items)
    assert [(p, s) for p, s, _ in found] == [(prompts[0], items[0][0]), (prompts[1], "TruthfulQA")]


@needs_data
def test_the_held_out_verdict_is_measured_on_the_start_and_the_final_model_only(tmp_path, tokenizer):
    """A tiny model taught to refuse; a destructive learning rate makes round 1 babble, and `final_model: last` returns
    it. The rounds read only the selection items; the final model is measured on the held-out ones, and the summary's
    first line says it lost refusals there."""
    from datasets import Dataset

    from trl_soft import SOFTTrainer
    from trl_soft.state import SOFTState, read_jsonl

    out = tmp_path / "out"
    args = tiny_config(
        out, num_rounds=1, learning_rate=5.0, max_grad_norm=0.0, prompt_format="plain", validation_path="none",
        diagnostics_num_prompts=0, behaviour_eval=["harmful"], behaviour_harmful_limit=20, behaviour_fewshot="none",
        behaviour_max_new_tokens=12, benchmark_data_dir=str(DATA), collapse_metric="none", final_model="last",
        behaviour_confirmation_share=0.5, generation_max_new_tokens=16,
    )
    prompts = Dataset.from_list([{"prompt": f"q {i}"} for i in range(8)])
    SOFTTrainer(model=refusing_model(tokenizer), args=args, train_dataset=prompts, processing_class=tokenizer).train()
    state = SOFTState.load(out)
    held = state.confirmation
    assert held["final_round"] == 1 and held["n"] == 10 and held["items"] == {"harmful": 10}
    assert held["lost"] >= 5 and held["outcome"] == "worse"
    start_rows, final_rows = read_jsonl(out / "round_0" / "confirmation.jsonl"), read_jsonl(out / "confirmation.jsonl")
    assert [r["id"] for r in start_rows] == [r["id"] for r in final_rows] and len(final_rows) == 10
    selection = {r["id"] for r in read_jsonl(out / "round_1" / "behaviour.jsonl")}
    assert len(selection) == 10 and selection.isdisjoint(r["id"] for r in final_rows)  # no round saw them
    first = (out / "summary.md").read_text().splitlines()[0]
    assert first.startswith("WARNING: Held-out verdict: the final model (round 1) is LESS aligned than the starting")
    assert "Held-out verdict" in (out / "final_model" / "README.md").read_text()
