"""Every bad input is refused before any model loads, with a message that names the field (or the file, and its line)
and the fix: one table of cases, each run through the entry point a user reaches it by (the `SOFTTrainer`, the
`trl-soft train` parser and `main` with a YAML config, or `trl-soft eval`), with a spy on `from_pretrained` that
proves no model was loaded.

Impossible values of single `SOFTConfig` fields are in tests/test_settings.py's table; this one is about what reaches
the trainer and the command lines: files, folders, YAML configs, flags and datasets.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
import transformers
import yaml
from datasets import Dataset
from peft import LoraConfig

from trl_soft.errors import SOFTResumeError
from trl_soft.prompting import asset_path

from .conftest import DATA, UNLOADABLE, make_tiny_llama, prompt_dataset, tiny_config

PWNED = "PWNED"  # the file a template payload would create if it ran


@pytest.fixture
def loads(monkeypatch):
    """Every `from_pretrained` of a model class (calls go through to the real one): must stay empty."""
    calls = []
    for owner in (transformers.PreTrainedModel, transformers.AutoModelForCausalLM):
        real = inspect.getattr_static(owner, "from_pretrained").__func__

        def spy(cls, *args, _real=real, **kwargs):
            calls.append(f"{cls.__name__}.from_pretrained({args[0] if args else ''!r})")
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(spy))
    return calls


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama with the real SmolLM2 tokenizer (context: 2048 tokens)."""
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# The settings of the finished run the resume cases continue (validation and diagnostics off: nothing but rounds).
RUN = dict(validation_path="none", collapse_metric="none", diagnostics_num_prompts=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_folder) -> Path:
    """A real 2-round run of the saved tiny model over 12 prompts, finished: the folder the resume cases copy."""
    from trl_soft import SOFTTrainer

    out = tmp_path_factory.mktemp("finished") / "out"
    SOFTTrainer(model=str(tiny_folder), args=tiny_config(out, **RUN), train_dataset=prompt_dataset(12)).train()
    return out


class Inputs:
    """What a case writes into its `tmp` folder, and the entry points it calls."""

    def __init__(self, tmp: Path, tiny: Path, tokenizer, monkeypatch, request):
        self.tmp, self.tiny, self.tokenizer, self.monkeypatch, self.request = tmp, tiny, tokenizer, monkeypatch, request

    # ---- files --------------------------------------------------------------------------------------------------
    def write(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return str(path)

    def jsonl(self, name: str, *rows) -> str:
        """A JSON Lines file: dicts and lists are dumped, strings and bytes written as they are."""
        lines = [r if isinstance(r, (str, bytes)) else json.dumps(r) for r in rows]
        return self.write(name, b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))

    def folder(self, name: str) -> str:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return str(self.tmp / name)

    def prompts(self, n: int = 12, name: str = "prompts.jsonl") -> str:
        return self.jsonl(name, *({"prompt": f"Tell me about topic {i}."} for i in range(n)))

    def model_folder(self, *names: str) -> str:
        """A folder with only `names` of the tiny model's files (links), or written empty when the tiny has none."""
        folder = self.tmp / "model"
        folder.mkdir(exist_ok=True)
        for name in names:
            source = self.tiny / name
            (folder / name).symlink_to(source) if source.exists() else (folder / name).write_text("")
        return str(folder)

    def tqa(self, *rows) -> str:
        """A data folder whose TruthfulQA copy holds `rows`."""
        self.jsonl("data/truthfulqa/truthful_qa_mc.jsonl", *rows)
        return str(self.tmp / "data")

    def hhh(self, **tasks) -> str:
        """A data folder with the four HHH task files: a good one each, unless `tasks` gives the category's text."""
        good = {"examples": [{"input": "Hi?", "target_scores": {"Hello.": 1, "Go away.": 0}}]}
        for category in ("harmless", "helpful", "honest", "other"):
            if tasks.get(category, "") is not None:
                self.write(f"data/hhh_alignment/{category}/task.json", tasks.get(category) or json.dumps(good))
        return str(self.tmp / "data")

    # ---- entry points ---------------------------------------------------------------------------------------------
    def trainer(self, dataset=None, model: str = UNLOADABLE, kwargs: dict | None = None, **overrides):
        """`SOFTTrainer(model, args=tiny_config(**overrides), train_dataset=dataset or 12 prompts, **kwargs)`."""
        from trl_soft import SOFTTrainer

        kwargs = {"train_dataset": dataset if dataset is not None else prompt_dataset(12), **(kwargs or {})}
        return SOFTTrainer(model=model, args=tiny_config(self.tmp / "out", **overrides), **kwargs)

    def cli(self, *flags: str, **config):
        """`trl-soft train --config config.yaml *flags` through the real parser and `main` (the YAML: a small run
        on `UNLOADABLE` over 12 prompts, updated with `config`; or `text`, the whole YAML)."""
        from trl_soft.scripts.train import main, make_parser

        values = dict(
            model_name_or_path=UNLOADABLE, prompts_dataset=config.pop("prompts_dataset", None) or self.prompts(),
            output_dir=str(self.tmp / "out"), report_to="none", num_rounds=2, num_exemplars=2,
            generation_backend="hf", disable_tqdm=True,
        )
        text = config.pop("text", None)
        path = self.write("config.yaml", text if text is not None else yaml.safe_dump({**values, **config}))
        main(*make_parser().parse_args_and_config(args=["--config", path, *flags]))

    def eval(self, *flags: str):
        """`trl-soft eval --model UNLOADABLE *flags`."""
        from trl_soft.scripts.evaluate import run

        run(["--model", UNLOADABLE, *flags])

    def lengths(self, prompts: list[str], **overrides):
        """`SOFTTrainer` on the saved tiny model (a real, loadable folder: the spy sees any load; context 2048 tokens)
        over `prompts`: the lengths are counted with its tokenizer and config alone."""
        return self.trainer(Dataset.from_list([{"prompt": p} for p in prompts]), model=str(self.tiny), **overrides)

    def resumed(self, damage=None, dataset=None, model: str | None = None, kwargs: dict | None = None, **overrides):
        """A copy of the finished 2-round run in `out`, changed by `damage(out)`, continued by a `SOFTTrainer` on the
        tiny model (`resume_from_checkpoint=True`, the run's settings updated with `overrides`)."""
        out, finished = self.tmp / "out", self.request.getfixturevalue("finished_run")
        self.request.getfixturevalue("loads").clear()  # the finished run's own load, the first time it is made
        shutil.copytree(finished, out)
        if damage is not None:
            damage(out)
        return self.trainer(dataset, model=model or str(self.tiny), kwargs=kwargs, resume_from_checkpoint=True,
                            **{**RUN, **overrides})

    def env(self, name: str, value: str) -> None:
        self.monkeypatch.setenv(name, value)


@pytest.fixture
def inputs(tmp_path, tiny_folder, tokenizer, monkeypatch, request):
    return Inputs(tmp_path, tiny_folder, tokenizer, monkeypatch, request)


def case(case_id: str, action, error: type[BaseException], *patterns: str):
    """`action(inputs)` must raise `error` with a message matching every one of `patterns`, loading no model."""
    return pytest.param(action, error, patterns, id=case_id)


def ex(i, **fields):
    """An exemplar row."""
    return {"id": f"e{i}", "prompt": f"Question {i}?", "response": f"Answer {i}.", **fields}


def tq(question="Q?", mc1=(["yes", "no"], [1, 0]), mc2=(["yes", "no"], [1, 0]), **fields):
    """A TruthfulQA row."""
    row = {"question": question, "mc1_targets": {"choices": mc1[0], "labels": mc1[1]},
           "mc2_targets": {"choices": mc2[0], "labels": mc2[1]}}
    return {**row, **fields}


LATIN1 = '{"prompt": "caf\xe9"}'.encode("latin-1")
GOOD = {"prompt": "What is the boiling point of water?"}
PAIR = {"prompt": "Capital of France?", "reference": "Paris."}
TQA = "truthfulqa_mc1"
VLLM_SERVER = {"generation_backend": "vllm", "vllm_mode": "server"}
SERVER_NOBODY = "http://127.0.0.1:1"  # nothing listens on port 1
LONG = " ".join(["word"] * 2500)  # about 2500 tokens: more than the tiny model's context of 2048


def truncate(name: str, keep: float = 0.5):
    """Cut the run's file `name` to a fraction of its bytes, as a disk error or a hand edit might."""
    def damage(out: Path):
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: int(len(data) * keep)])
    return damage


def round_2_interrupted(rows: str | None = None):
    """The manifest set back to round 1 done (round 2 interrupted after writing its generations), and round 2's
    `generations.jsonl` cut in its second line (or replaced by `rows`)."""
    def damage(out: Path):
        from trl_soft.state import SOFTState

        state = SOFTState.load(out)
        state.rounds_completed, state.history, state.final_round = 1, state.history[:1], None
        state.save(out)
        for name in ("round_2/model", "round_2/metrics.json", "round_2/training.json", "final_model", "summary.md"):
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
        path = out / "round_2" / "generations.jsonl"
        if rows is None:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text(lines[0] + lines[1][: len(lines[1]) // 2], encoding="utf-8")
        else:
            path.write_text(rows, encoding="utf-8")
    return damage


def other_model(r) -> str:
    """Another saved tiny model (different random weights' folder, same architecture)."""
    folder = r.tmp / "other-model"
    shutil.copytree(r.tiny, folder)
    return str(folder)


def template(text: str, name: str = "t.jinja"):
    """`trl-soft eval --benchmarks truthfulqa_mc1 --truthfulqa_template <text>`, on the shared data."""
    return lambda r: r.eval("--benchmarks", TQA, "--data_dir", str(DATA), "--truthfulqa_template", r.write(name, text))


CASES = [
    # ---- the prompts file (`trl-soft train --prompts_dataset FILE`) ------------------------------------------------
    case("prompts-jsonl-empty", lambda r: r.cli(prompts_dataset=r.write("p.jsonl", "")), ValueError,
         r"`prompts_dataset`: \S*p\.jsonl is empty", "one JSON object per line", "'prompt' field"),
    case("prompts-jsonl-blank-lines", lambda r: r.cli(prompts_dataset=r.write("p.jsonl", "\n  \n\n")), ValueError,
         r"p\.jsonl is empty"),
    case("prompts-jsonl-latin1", lambda r: r.cli(prompts_dataset=r.write("p.jsonl", LATIN1)), ValueError,
         r"`prompts_dataset`: \S*p\.jsonl:1 is not UTF-8", "Save the file as UTF-8"),
    case("prompts-jsonl-latin1-line-3", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", GOOD, GOOD, LATIN1)),
         ValueError, r"p\.jsonl:3 is not UTF-8"),
    case("prompts-csv-latin1", lambda r: r.cli(prompts_dataset=r.write("p.csv", "prompt\ncaf\xe9\n".encode("latin-1"))),
         ValueError, r"p\.csv:2 is not UTF-8", "UTF-8"),
    case("prompts-txt-utf16", lambda r: r.cli(prompts_dataset=r.write("p.txt", "a prompt\n".encode("utf-16"))),
         ValueError, r"p\.txt:1 is not UTF-8"),
    case("prompts-jsonl-bad-json", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", GOOD, '{"prompt": "x"')),
         ValueError, r"p\.jsonl:2 is not valid JSON", "one JSON object per line"),
    case("prompts-jsonl-list-line", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", ["a prompt"])), ValueError,
         r"p\.jsonl:1 is a JSON list, not an object", "one JSON object per line"),
    case("prompts-json-array-of-strings", lambda r: r.cli(prompts_dataset=r.write("p.json", '["a", "b"]')),
         ValueError, r"item 0 of \S*p\.json is a JSON string, not an object", "a list of JSON objects"),
    case("prompts-csv-header-only", lambda r: r.cli(prompts_dataset=r.write("p.csv", "prompt\n")), ValueError,
         r"p\.csv is empty", "header row naming a 'prompt' column"),
    case("prompts-csv-ragged", lambda r: r.cli(prompts_dataset=r.write("p.csv", "prompt,x\na,1\nb,2,3\n")),
         ValueError, r"`prompts_dataset`: cannot read \S*p\.csv", "Expected 2 fields in line 3"),
    case("prompts-parquet-empty", lambda r: r.cli(prompts_dataset=r.write("p.parquet", b"")), ValueError,
         r"p\.parquet is empty"),
    case("prompts-folder-empty", lambda r: r.cli(prompts_dataset=r.folder("prompts")), ValueError,
         "`prompts_dataset`: the folder .* holds no data file"),
    case("prompts-folder-with-an-empty-file",
         lambda r: r.cli(prompts_dataset=str(Path(r.write("prompts/a.jsonl", "")).parent)), ValueError,
         r"prompts/a\.jsonl is empty"),
    case("prompts-missing", lambda r: r.cli(prompts_dataset=str(r.tmp / "nope.jsonl")), FileNotFoundError,
         "`prompts_dataset`: no such file or folder", r"nope\.jsonl"),
    case("prompts-unknown-suffix", lambda r: r.cli(prompts_dataset=r.write("p.xlsx", "x")), ValueError,
         r"`prompts_dataset`: cannot read '\.xlsx' files"),
    # ---- the prompts (a file's rows, or the `train_dataset` given to the trainer) ----------------------------------
    case("prompts-other-column", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", *[{"question": "Q?"}] * 4)),
         ValueError, r"`prompt_column`: .*no column 'prompt'.*'question'", "--prompt_column"),
    case("prompts-number", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", GOOD, {"prompt": 7}, GOOD)),
         ValueError, r"`prompt_column`: row 1 .* \(7\)", "fix or remove that row"),
    case("prompts-null", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", {"prompt": None}, GOOD, GOOD)),
         ValueError, r"`prompt_column`: row 0 .* \(None\)"),
    case("prompts-blank", lambda r: r.trainer(Dataset.from_list([GOOD, {"prompt": "  "}, GOOD])), ValueError,
         r"`prompt_column`: row 1 .*not a non-empty string"),
    case("prompts-list", lambda r: r.cli(prompts_dataset=r.jsonl("p.jsonl", {"prompt": ["a", "b"]}, {"prompt": []})),
         ValueError, r"`prompt_column`: row 0"),
    case("prompts-fewer-than-rounds", lambda r: r.cli(prompts_dataset=r.prompts(2), num_rounds=3), ValueError,
         "2 prompts, fewer than `num_rounds`=3", "lower `num_rounds`"),
    case("prompts-too-few-for-the-chunks", lambda r: r.trainer(prompts_per_round=10), ValueError,
         r"`prompts_per_round`=10 x `num_rounds`=2 needs 20 .* has 12", "prompt_schedule='reuse'"),
    case("prompts-too-few-to-reuse", lambda r: r.trainer(prompt_schedule="reuse", prompts_per_round=20), ValueError,
         r"`prompts_per_round`=20 is more than the 12 prompts"),
    # ---- vLLM servers (checked when the engine is chosen, before any model loads) -----------------------------------
    case("server-url-unreachable", lambda r: r.trainer(model=str(r.tiny), **VLLM_SERVER,
         vllm_server_base_url=[SERVER_NOBODY]), ValueError,
         r"`vllm_server_base_url`: no vLLM server answers at http://127\.0\.0\.1:1 "),
    case("server-url-unreachable-second", lambda r: r.trainer(model=str(r.tiny), **VLLM_SERVER,
         vllm_server_base_url=f"unix:{r.tmp}/no.sock,{SERVER_NOBODY}"), ValueError,
         r"`vllm_server_base_url`: no vLLM server answers at unix:.*no\.sock"),
    case("server-key-variable-unset", lambda r: r.trainer(model=str(r.tiny), **VLLM_SERVER, vllm_server_base_url=
         SERVER_NOBODY, vllm_server_api_key_env="TRL_SOFT_NO_SUCH_KEY_VAR"), ValueError,
         "`vllm_server_api_key_env`.*TRL_SOFT_NO_SUCH_KEY_VAR is not set"),
    case("server-devices-on-a-cpu", lambda r: r.trainer(model=str(r.tiny), **VLLM_SERVER, vllm_server_devices=[0]),
         ValueError, r"`vllm_server_devices` names device\(s\) \[0\].*no CUDA device"),
    case("dataset-empty", lambda r: r.trainer(prompt_dataset(0)), ValueError, r"`train_dataset`.* is empty"),
    case("dataset-other-column", lambda r: r.trainer(prompt_dataset(12, column="question")), ValueError,
         r"`prompt_column`: .*'question'", "--prompt_column"),
    case("dataset-missing", lambda r: r.trainer(kwargs={"train_dataset": None}), ValueError,
         r"`train_dataset` \(the prompt dataset\) is required"),
    case("formatting-func", lambda r: r.trainer(kwargs={"formatting_func": str}), ValueError,
         "`formatting_func` is not supported"),
    # ---- the validation set (`validation_path`) ---------------------------------------------------------------------
    case("validation-bad-json", lambda r: r.trainer(validation_path=r.jsonl("v.jsonl", PAIR, '{"prompt": ')),
         ValueError, r"`validation_path`: \S*v\.jsonl:2 is not valid JSON", "one JSON object per line"),
    case("validation-json-list", lambda r: r.trainer(validation_path=r.jsonl("v.jsonl", [PAIR, PAIR])), ValueError,
         r"`validation_path`: \S*v\.jsonl:1 is a JSON list, not an object", "JSON Lines"),
    case("validation-pretty-printed-array",
         lambda r: r.trainer(validation_path=r.write("v.jsonl", json.dumps([PAIR], indent=2))), ValueError,
         r"v\.jsonl:1 is not valid JSON", "one JSON object per line"),
    case("validation-string-line", lambda r: r.trainer(validation_path=r.jsonl("v.jsonl", PAIR, '"Paris."')),
         ValueError, r"v\.jsonl:2 is a JSON string, not an object"),
    case("validation-latin1", lambda r: r.trainer(validation_path=r.jsonl("v.jsonl", PAIR, LATIN1)), ValueError,
         r"`validation_path`: \S*v\.jsonl:2 is not UTF-8", "Save the file as UTF-8"),
    case("validation-no-reference", lambda r: r.trainer(validation_path=r.jsonl("v.jsonl", {"prompt": "Q?"})),
         ValueError, r"`validation_path`: \S*v\.jsonl:1 needs non-empty string fields 'prompt' and 'reference'"),
    case("validation-empty", lambda r: r.trainer(validation_path=r.write("v.jsonl", "\n")), ValueError,
         r"`validation_path`: \S*v\.jsonl holds no pairs", "'none'"),
    case("validation-missing", lambda r: r.trainer(validation_path=str(r.tmp / "v.jsonl")), FileNotFoundError,
         "`validation_path`: no such file", "'none'"),
    # ---- exemplars (`exemplars_path`, `exemplars=`) -----------------------------------------------------------------
    case("exemplars-empty-file", lambda r: r.trainer(exemplars_path=r.write("x.jsonl", "")), ValueError,
         r"`exemplars_path`: \S*x\.jsonl holds no exemplars", "one JSON object per line"),
    case("exemplars-empty-file-zero-shot", lambda r: r.trainer(exemplars_path=r.write("x.jsonl", ""), num_exemplars=0),
         ValueError, r"x\.jsonl holds no exemplars"),
    case("exemplars-empty-pool-zero-shot", lambda r: r.trainer(num_exemplars=0, kwargs={"exemplars": []}), ValueError,
         r"exemplar pool \(`exemplars_path`, or `exemplars=`\) is empty", "also with `num_exemplars=0`"),
    case("exemplars-fewer-than-k", lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0)), num_exemplars=2),
         ValueError, "`num_exemplars` is 2 but the exemplar pool has only 1", "Lower `num_exemplars`"),
    case("exemplars-no-response",
         lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0), {"id": "a", "prompt": "Q?"}, ex(1))),
         ValueError, r"`exemplars_path`: malformed exemplar at \S*x\.jsonl:2: field 'response' is missing"),
    case("exemplars-empty-prompt", lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0), ex(1, prompt=""))),
         ValueError, r"x\.jsonl:2: field 'prompt' is missing or empty"),
    case("exemplars-list-line", lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0), ["not", "an", "object"])),
         ValueError, r"`exemplars_path`: \S*x\.jsonl:2 is a JSON list, not an object"),
    case("exemplars-bad-json", lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0), "{not json")), ValueError,
         r"x\.jsonl:2 is not valid JSON"),
    case("exemplars-duplicate-id", lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0), ex(0), ex(1))),
         ValueError, "id 'e0' appears twice"),
    case("exemplars-latin1", lambda r: r.trainer(exemplars_path=r.jsonl("x.jsonl", ex(0), LATIN1)), ValueError,
         r"`exemplars_path`: \S*x\.jsonl:2 is not UTF-8"),
    case("exemplars-missing", lambda r: r.trainer(exemplars_path=str(r.tmp / "x.jsonl")), FileNotFoundError,
         "`exemplars_path`: no such file"),
    # ---- principles (`principles_path`) -----------------------------------------------------------------------------
    case("principles-missing", lambda r: r.trainer(principles_path=str(r.tmp / "p.json")), FileNotFoundError,
         "`principles_path`: no such file"),
    case("principles-bad-json", lambda r: r.trainer(principles_path=r.write("p.json", '{\n"principles": [\n')),
         ValueError, r"`principles_path`: \S*p\.json:3 is not valid JSON", "'principles'"),
    case("principles-empty-list", lambda r: r.trainer(principles_path=r.write("p.json", '{"principles": []}')),
         ValueError, "non-empty 'principles' list"),
    case("principles-a-list", lambda r: r.trainer(principles_path=r.write("p.json", '[{"text": "Be kind."}]')),
         ValueError, "must be an object with a non-empty 'principles' list"),
    case("principles-no-text",
         lambda r: r.trainer(principles_path=r.write("p.json", '{"principles": [{"text": "x"}, {"name": "y"}]}')),
         ValueError, "principle #1 .* needs a non-empty 'text'"),
    case("principles-latin1",
         lambda r: r.trainer(principles_path=r.write("p.json", '{"principles": [{"text": "caf\xe9"}]}'.encode("latin-1"))),
         ValueError, r"`principles_path`: \S*p\.json:1 is not UTF-8"),
    # ---- behaviour sets (`behaviour_benign_path`, `behaviour_unknowable_path`) ---------------------------------------
    case("behaviour-benign-bad-json",
         lambda r: r.trainer(behaviour_eval=["benign"], behaviour_benign_path=r.jsonl("b.jsonl", GOOD, "{")),
         ValueError, r"`behaviour_benign_path`: \S*b\.jsonl:2 is not valid JSON"),
    case("behaviour-unknowable-empty",
         lambda r: r.trainer(behaviour_eval=["unknowable"], behaviour_unknowable_path=r.write("u.jsonl", "")),
         ValueError, r"`behaviour_unknowable_path`: \S*u\.jsonl has no rows"),
    case("behaviour-benign-missing",
         lambda r: r.trainer(behaviour_eval=["benign"], behaviour_benign_path=str(r.tmp / "b.jsonl")),
         FileNotFoundError, r"`behaviour_benign_path`: no file at \S*b\.jsonl"),
    # ---- training prompts that are evaluation items (`allow_eval_overlap`) -------------------------------------------
    case("prompts-hold-a-behaviour-item",
         lambda r: r.trainer(Dataset.from_list([{"prompt": f"A plain prompt number {k}."} for k in range(11)] + [
             {"prompt": json.loads(asset_path("behaviour_benign.jsonl").read_text().splitlines()[3])["prompt"]}]),
             behaviour_eval=["benign"], behaviour_confirmation_share=0.5),
         ValueError, r"1 training prompt\(s\) are evaluation items", "behaviour set 'benign'",
         "`allow_eval_overlap=True`"),
    # ---- TruthfulQA and HHH copies (`trl-soft eval --data_dir`, `benchmark_data_dir`) --------------------------------
    case("truthfulqa-bad-json", lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(), '{"question": ')),
         ValueError, r"TruthfulQA: \S*truthful_qa_mc\.jsonl:2 is not valid JSON", "one JSON object per line"),
    case("truthfulqa-list-line", lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa([tq()])), ValueError,
         r"truthful_qa_mc\.jsonl:1 is a JSON list, not an object"),
    case("truthfulqa-latin1", lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(), LATIN1)), ValueError,
         r"truthful_qa_mc\.jsonl:2 is not UTF-8", "Save the file as UTF-8"),
    case("truthfulqa-empty", lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa()), ValueError,
         r"TruthfulQA: \S*truthful_qa_mc\.jsonl holds no questions"),
    case("truthfulqa-no-correct-answer",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(), tq(mc1=(["a", "b"], [0, 0])))), ValueError,
         r"truthful_qa_mc\.jsonl:2: 'mc1_targets' has no correct answer"),
    case("truthfulqa-no-choices", lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(mc1=([], [])))),
         ValueError, r"truthful_qa_mc\.jsonl:1: 'mc1_targets' is missing or has no choices"),
    case("truthfulqa-empty-choice",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(), tq(mc2=(["a", " "], [1, 0])))), ValueError,
         r"truthful_qa_mc\.jsonl:2: 'mc2_targets' has an empty choice"),
    case("truthfulqa-no-question",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(), {"mc1_targets": tq()["mc1_targets"]})),
         ValueError, r"truthful_qa_mc\.jsonl:2: 'question' is missing or empty"),
    case("truthfulqa-choices-a-string", lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(mc1=("ab", [1])))),
         ValueError, r"'mc1_targets' 'choices' must be a list of strings; got 'ab'"),
    case("truthfulqa-labels-not-0-1",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(mc2=(["a", "b"], ["yes", "no"])))), ValueError,
         r"'mc2_targets' 'labels' must be a list of 0 and 1"),
    case("truthfulqa-labels-miscounted",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(mc1=(["a", "b"], [1])))), ValueError,
         "'mc1_targets' has 2 choices but 1 labels"),
    case("truthfulqa-correct-not-first",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", r.tqa(tq(mc1=(["a", "b"], [0, 1])))), ValueError,
         "the correct MC1 choice must be listed first"),
    case("truthfulqa-file-missing", lambda r: r.eval("--benchmarks", TQA, "--data_dir", str(r.tmp)),
         FileNotFoundError, r"TruthfulQA: \S*truthfulqa/truthful_qa_mc\.jsonl does not exist", "--data_dir"),
    case("truthfulqa-malformed-in-a-run",
         lambda r: r.trainer(benchmarks=[TQA], benchmark_data_dir=r.tqa(tq(), "[1, 2]")), ValueError,
         r"truthful_qa_mc\.jsonl:2 is a JSON list"),
    case("hhh-bad-json", lambda r: r.eval("--benchmarks", "hhh", "--data_dir", r.hhh(honest='{"examples": [\n')),
         ValueError, r"HHH: \S*honest/task\.json:2 is not valid JSON", "one BIG-bench task object"),
    case("hhh-latin1",
         lambda r: r.eval("--benchmarks", "hhh", "--data_dir", r.hhh(helpful='{"examples": "caf\xe9"}'.encode("latin-1"))),
         ValueError, r"HHH: \S*helpful/task\.json:1 is not UTF-8"),
    case("hhh-a-list", lambda r: r.eval("--benchmarks", "hhh", "--data_dir", r.hhh(other="[1, 2]")), ValueError,
         r"HHH \S*other/task\.json: no 'examples' list"),
    case("hhh-example-not-an-object", lambda r: r.eval("--benchmarks", "hhh", "--data_dir", r.hhh(other='{"examples": [3]}')),
         ValueError, r"other/task\.json example 0: needs an 'input' string and at least two 'target_scores'"),
    case("hhh-score-not-a-number",
         lambda r: r.eval("--benchmarks", "hhh", "--data_dir",
                          r.hhh(harmless=json.dumps({"examples": [{"input": "x", "target_scores": {"a": "1", "b": 0}}]}))),
         ValueError, r"harmless/task\.json example 0: 'target_scores' must map each reply to a number"),
    case("hhh-no-correct-reply",
         lambda r: r.eval("--benchmarks", "hhh", "--data_dir",
                          r.hhh(honest=json.dumps({"examples": [{"input": "x", "target_scores": {"a": 1, "b": 1}}]}))),
         ValueError, r"honest/task\.json example 0: all choices score the same, so none is correct"),
    case("hhh-category-missing", lambda r: r.eval("--benchmarks", "hhh", "--data_dir", r.hhh(honest=None)),
         FileNotFoundError, r"HHH: \S*honest/task\.json does not exist", "needs all of"),
    case("eval-unknown-benchmark", lambda r: r.eval("--benchmarks", "truthfulqa_mc1,mmlu", "--data_dir", str(DATA)),
         ValueError, r"`benchmarks` has unknown name\(s\) \['mmlu'\]", "choose from"),
    case("eval-data-dir-missing", lambda r: r.eval("--benchmarks", "hhh", "--data_dir", str(r.tmp / "nowhere")),
         FileNotFoundError, r"`data_dir`: no such folder '\S*nowhere'", "leave it unset"),
    case("benchmark-data-dir-missing", lambda r: r.trainer(benchmarks=["hhh"], benchmark_data_dir=str(r.tmp / "nowhere")),
         FileNotFoundError, r"`benchmark_data_dir`: no such folder '\S*nowhere'", r"truthful_qa_mc\.jsonl"),
    case("benchmark-data-dir-missing-yaml", lambda r: r.cli(benchmarks=[TQA], benchmark_data_dir=str(r.tmp / "gone")),
         FileNotFoundError, r"`benchmark_data_dir`: no such folder '\S*gone'"),
    case("benchmark-data-dir-env-missing",
         lambda r: (r.env("TRL_SOFT_DATA_DIR", str(r.tmp / "gone")), r.trainer(benchmarks=["hhh"])),
         FileNotFoundError, r"`\$TRL_SOFT_DATA_DIR`: no such folder '\S*gone'"),
    # ---- the engine's quantization and length, checked against the installed vLLM before any model loads ------------
    case("vllm-quantization-unknown", lambda r: r.trainer(generation_backend="vllm", vllm_quantization="int3"),
         ValueError, r"`vllm_quantization`='int3' is not a quantization method of the installed vLLM",
         "Use 'auto', 'none'"),
    case("vllm-quantization-not-in-registry",
         lambda r: r.trainer(generation_backend="auto", vllm_quantization="bitsandbytes"),
         ValueError, r"`vllm_quantization`='bitsandbytes' is not a quantization method of the installed vLLM"),
    case("vllm-4bit-base-where-nothing-works",
         lambda r: r.trainer(generation_backend="vllm", model_init_kwargs={"quantization_config": {"load_in_4bit": True}},
                             kwargs={"peft_config": LoraConfig(r=8, target_modules=["q_proj"])}),
         ValueError, r"`generation_backend='vllm'`: the base model is quantized with bitsandbytes", "CPU build",
         "generation_backend='hf'"),
    case("vllm-max-model-len-below-prompt-and-answer",
         lambda r: r.lengths(["Hi?"] * 12, generation_backend="vllm", vllm_max_model_len=64),
         ValueError, r"does not fit .* more than `vllm_max_model_len`=64",
         r"raise `vllm_max_model_len` to at least \d+, or leave it unset"),
    # ---- the processes `accelerate launch` starts (WORLD_SIZE) against one vLLM engine per tensor-parallel group --
    case("vllm-tensor-parallel-not-dividing-processes",
         lambda r: (r.env("WORLD_SIZE", "2"), r.trainer(generation_backend="vllm", vllm_tensor_parallel_size=3)),
         ValueError, r"`vllm_tensor_parallel_size` must divide the number of processes \(2\)", "got 3",
         "vllm_colocate_ranks='main'"),
    case("vllm-tensor-parallel-not-dividing-processes-yaml",
         lambda r: (r.env("WORLD_SIZE", "4"), r.cli(generation_backend="vllm", vllm_tensor_parallel_size=3)),
         ValueError, r"`vllm_tensor_parallel_size` must divide the number of processes \(4\)"),
    case("eval-limit-0", lambda r: r.eval("--limit", "0"), ValueError, "`limit` must be >= 1"),
    case("eval-max-batch-0", lambda r: r.eval("--max_batch", "0"), ValueError, "`max_batch` must be >= 1"),
    case("eval-dtype", lambda r: r.eval("--dtype", "fp8"), ValueError, "`dtype` must be one of float32, bfloat16"),
    # ---- the TruthfulQA prompt template (`trl-soft eval --truthfulqa_template`): sandboxed, nothing runs -----------
    case("template-subclasses", template("{{ ''.__class__.__mro__[1].__subclasses__() }}"), ValueError,
         r"`truthfulqa_template`: \S*t\.jinja tries to reach unsafe Python internals", "only format `question`"),
    case("template-os-system", template(f"{{{{ cycler.__init__.__globals__.os.system('touch {PWNED}') }}}}"),
         ValueError, "`truthfulqa_template`.*unsafe"),
    case("template-os-system-via-namespace",
         template(f"{{{{ namespace.__init__.__globals__['os'].popen('touch {PWNED}').read() }}}}"), ValueError,
         "`truthfulqa_template`.*unsafe"),
    case("template-mutates", template("{% set xs = [] %}{{ xs.append(question) }}"), ValueError,
         "`truthfulqa_template`.*unsafe"),
    case("template-dunder", template("Q: {{ question.__class__ }}"), ValueError,
         r"`truthfulqa_template`: \S*t\.jinja tries to reach unsafe .*'__class__' of 'str'"),
    case("template-unknown-name", template("Q: {{ choices }}\nA:"), ValueError,
         r"`truthfulqa_template`.*cannot be rendered \(UndefinedError: 'choices' is undefined\)"),
    case("template-syntax", template("Q: {% for x in %}\nA:"), ValueError,
         r"`truthfulqa_template`: \S*t\.jinja is not a valid Jinja template \(template line 1"),
    case("template-yaml-without-doc_to_text", template("task: truthfulqa_mc1\n", "t.yaml"), ValueError,
         r"`truthfulqa_template`: \S*t\.yaml has no `doc_to_text`"),
    case("template-missing",
         lambda r: r.eval("--benchmarks", TQA, "--data_dir", str(DATA), "--truthfulqa_template", str(r.tmp / "t.j2")),
         FileNotFoundError, r"`truthfulqa_template`: no such file"),
    # ---- YAML configs and flags (`trl-soft train --config FILE`): types, lists, training values --------------------
    case("yaml-rounds-fraction", lambda r: r.cli(num_rounds=2.5), ValueError,
         r"`num_rounds` must be a whole number \(int\); got 2\.5 \(float\)"),
    case("yaml-rounds-list", lambda r: r.cli(num_rounds=[1, 2]), ValueError,
         r"`num_rounds` must be a whole number \(int\); got \[1, 2\] \(list\)"),
    case("yaml-exemplars-bool", lambda r: r.cli(num_exemplars=True), ValueError,
         r"`num_exemplars` must be a whole number \(int\); got True \(bool\)"),
    case("yaml-temperature-list", lambda r: r.cli(generation_temperature=[0.7]), ValueError,
         r"`generation_temperature` must be a number \(float\); got \[0\.7\]"),
    case("yaml-patience-fraction", lambda r: r.cli(collapse_patience=1.5), ValueError,
         r"`collapse_patience` must be a whole number \(int\); got 1\.5"),
    case("yaml-restore-best-round-list", lambda r: r.cli(restore_best_round=[True]), ValueError,
         r"`restore_best_round` must be true or false \(bool\); got \[True\]"),
    case("yaml-filters-string", lambda r: r.cli(filters="too_shrt"), ValueError,
         r"`filters` has unknown filter name\(s\) \['too_shrt'\]"),  # one name, not its letters
    case("yaml-filters-comma-string", lambda r: r.cli(filters="too_short, repetiton"), ValueError,
         r"unknown filter name\(s\) \['repetiton'\]"),
    case("yaml-filters-number", lambda r: r.cli(filters=3), ValueError,
         r"`filters` must be a list of strings or None; got 3 \(int\)"),
    case("yaml-benchmarks-string", lambda r: r.cli(benchmarks="truthfulqa"), ValueError,
         r"`benchmarks` has unknown name\(s\) \['truthfulqa'\]"),
    case("yaml-behaviour-eval-string", lambda r: r.cli(behaviour_eval="harmfull"), ValueError,
         r"unknown set name.*'harmfull'"),
    case("yaml-stop-strings-numbers", lambda r: r.cli(generation_stop_strings=[1, 2]), ValueError,
         r"`generation_stop_strings` must be a list of strings or None; got \[1, 2\]"),
    case("yaml-gate-values-mapping", lambda r: r.cli(principle_gate_values={"harmful": 1}), ValueError,
         r"`principle_gate_values` must be a list of strings; got \{'harmful': 1\}"),
    case("yaml-learning-rate-negative", lambda r: r.cli(learning_rate=-2e-4), ValueError,
         r"`learning_rate` must be > 0", "2e-4 with LoRA"),
    case("yaml-epochs-0", lambda r: r.cli(num_train_epochs=0), ValueError,
         r"`num_train_epochs`=0(\.0)? with `max_steps`=-1: every round would generate its data and then train no step",
         "`max_steps` > 0"),
    case("flag-epochs-negative", lambda r: r.cli("--num_train_epochs", "-1", "--max_steps", "0"), ValueError,
         r"`num_train_epochs`=-1(\.0)? with `max_steps`=0"),
    case("yaml-batch-size-0", lambda r: r.cli(per_device_train_batch_size=0), ValueError,
         r"`per_device_train_batch_size` must be >= 1; got 0"),
    case("flag-accumulation-0", lambda r: r.cli("--gradient_accumulation_steps", "0"), ValueError,
         r"`gradient_accumulation_steps` must be >= 1; got 0"),
    case("yaml-max-length-tiny", lambda r: r.cli(max_length=4), ValueError,
         r"`max_length` must be at least 16 tokens, or None"),
    case("yaml-not-a-mapping", lambda r: r.cli(text="- num_rounds\n- 3\n"), ValueError, "must contain a YAML mapping"),
    case("yaml-unknown-key", lambda r: r.cli(num_round=3), ValueError, r"Unknown arguments from config file.*--num_round"),
    # ---- model folders (`model_name_or_path`, `--model`, `judge_model`) ----------------------------------------------
    case("model-missing", lambda r: r.trainer(model=str(r.tmp / "no" / "such" / "model")), FileNotFoundError,
         r"`model_name_or_path`: '\S*no/such/model' is not an existing folder and not a hub model id"),
    case("model-folder-empty", lambda r: r.trainer(model=r.model_folder()), FileNotFoundError,
         r"`model_name_or_path`: the folder '\S*model' is empty", "save_pretrained"),
    case("model-folder-no-config", lambda r: r.trainer(model=r.model_folder("README.md", "tokenizer.json")),
         FileNotFoundError, r"'\S*model' is not a model folder: it has no config\.json \(it holds README\.md, tok"),
    case("model-folder-no-weights", lambda r: r.trainer(model=r.model_folder("config.json", "tokenizer.json")),
         FileNotFoundError, r"'\S*model' has a config but no weights", r"model\.save_pretrained"),
    case("model-folder-no-tokenizer", lambda r: r.trainer(model=r.model_folder("config.json", "model.safetensors")),
         FileNotFoundError, r"`model_name_or_path`: '\S*model' has no tokenizer files", "tokenizer.save_pretrained",
         "processing_class"),
    case("model-folder-no-tokenizer-yaml",
         lambda r: r.cli(model_name_or_path=r.model_folder("config.json", "model.safetensors", "tokenizer_config.json")),
         FileNotFoundError, r"`model_name_or_path`: '\S*model' has no tokenizer files"),
    case("model-folder-no-config-eval", lambda r: r.eval("--benchmarks", "hhh", "--data_dir", str(DATA), "--model",
                                                         r.model_folder("notes.txt")),
         FileNotFoundError, r"`model_name_or_path`: '\S*model' is not a model folder"),
    case("model-chat-format-without-template",
         lambda r: r.trainer(model=r.model_folder("config.json", "model.safetensors", "tokenizer.json",
                                                  "tokenizer_config.json"), prompt_format="chat"),
         ValueError, "`prompt_format='chat'` but the tokenizer has no chat template", "prompt_format='plain'"),
    case("judge-model-empty-folder", lambda r: r.trainer(behaviour_judge="hf", judge_model=r.model_folder()),
         ValueError, r"`judge_model` '\S*model'"),
    # ---- prompt lengths against the model's context and `max_length` (tokenizer and config only) ---------------------
    case("lengths-prompt-beyond-the-context", lambda r: r.lengths(["Hi?"] * 3 + [LONG] + ["Hi?"] * 8), ValueError,
         r"Prompt row 3 does not fit the model's context in round \d", r"the 2048 tokens the model takes",
         "`max_position_embeddings`", "lower `num_exemplars` or `generation_max_new_tokens`"),
    case("lengths-answer-beyond-the-context", lambda r: r.lengths(["Hi?"] * 12, generation_max_new_tokens=2000),
         ValueError, r"with `generation_max_new_tokens`=2000 it needs \d+, more than the 2048 tokens",
         r"12 of 12 generation prompts are too long"),
    case("lengths-max-length-below-the-prompt", lambda r: r.lengths(["Tell me a story about a cat?"] * 12, max_length=20),
         ValueError, r"`max_length`=20 cannot hold the prompt of row \d+ as it is trained on \(\d+ tokens",
         r"The smallest `max_length` that holds every prompt with room for an answer is \d+"),
    case("lengths-max-length-below-one-long-prompt",
         lambda r: r.lengths(["Hi?"] * 11 + [" ".join(["word"] * 300)], max_length=256, prompt_format="plain"),
         ValueError, r"`max_length`=256 cannot hold the prompt of row 11 .*\(1 of 12 prompts are that long\)",
         r"is 30\d; 31\d keeps whole answers", "Raise `max_length`"),
    # ---- resume (`--resume`, `train(resume_from_checkpoint=True)`): a copy of a real finished run, changed ---------
    case("resume-empty-folder", lambda r: r.cli("--resume"), SOFTResumeError,
         r"`--resume`: '\S*out' holds no SOFT run to continue \(no soft_state\.json\)", "Drop `--resume`"),
    case("resume-folder-without-manifest",
         lambda r: r.resumed(lambda out: (out / "soft_state.json").unlink()), SOFTResumeError,
         r"holds no SOFT run to continue"),
    case("resume-manifest-truncated", lambda r: r.resumed(truncate("soft_state.json")), SOFTResumeError,
         r"`output_dir`: the manifest '\S*soft_state\.json' is damaged", "--overwrite_output_dir"),
    case("resume-manifest-empty", lambda r: r.resumed(truncate("soft_state.json", 0)), SOFTResumeError,
         r"soft_state\.json' is damaged"),
    case("resume-manifest-not-utf8",
         lambda r: r.resumed(lambda out: (out / "soft_state.json").write_bytes(b'{"config_hash": "caf\xe9"}')),
         SOFTResumeError, r"soft_state\.json' is damaged"),
    case("resume-manifest-a-list", lambda r: r.resumed(lambda out: (out / "soft_state.json").write_text("[1, 2]")),
         SOFTResumeError, r"soft_state\.json' is damaged"),
    case("resume-generations-truncated", lambda r: r.resumed(round_2_interrupted()), SOFTResumeError,
         r"`--resume`: \S*round_2/generations\.jsonl:2 is damaged", "Delete .* and resume again",
         "round 2 is then generated afresh"),
    case("resume-generations-missing-kept",
         lambda r: r.resumed(round_2_interrupted(json.dumps({"prompt_index": 0, "prompt": "p"}) + "\n")),
         SOFTResumeError, r"round_2/generations\.jsonl:1 is damaged \(missing exemplar_ids, .*kept"),
    case("resume-with-lora", lambda r: r.resumed(kwargs={"peft_config": LoraConfig(r=8, task_type="CAUSAL_LM")}),
         SOFTResumeError, r"made with different settings, which change the weights: `peft_config` null -> \{",
         "--overwrite_output_dir"),
    case("resume-other-model", lambda r: r.resumed(model=other_model(r)), SOFTResumeError,
         r"`model` \S*tiny\S* -> \S*other-model"),
    case("resume-learning-rate-and-scheduler", lambda r: r.resumed(learning_rate=1e-4, lr_scheduler_type="cosine"),
         SOFTResumeError, r"`learning_rate` 0\.005 -> 0\.0001; `lr_scheduler_type` \"linear\" -> \"cosine\""),
    case("resume-max-length", lambda r: r.resumed(max_length=512), SOFTResumeError, r"`max_length` 1024 -> 512"),
    case("resume-other-prompts", lambda r: r.resumed(dataset=prompt_dataset(12, column="prompt").map(
         lambda row: {"prompt": row["prompt"] + "!"})), SOFTResumeError, r"prompts \(data\) changed"),
    case("resume-other-exemplar-count", lambda r: r.resumed(num_exemplars=1), SOFTResumeError,
         r"`num_exemplars` 2 -> 1"),
    case("resume-fewer-rounds", lambda r: r.resumed(num_rounds=1), SOFTResumeError,
         r"`num_rounds`: 1 is fewer than the 2 rounds this run has done", "Give at least 2"),
    case("resume-more-rounds-other-prompts", lambda r: r.resumed(num_rounds=3), SOFTResumeError,
         r"`num_rounds`: 2 -> 3 .* would give the completed rounds other prompts", "set `prompts_per_round`"),
]


@pytest.mark.parametrize(("action", "error", "patterns"), CASES)
def test_a_bad_input_is_refused_before_any_model_loads(inputs, loads, action, error, patterns, monkeypatch):
    monkeypatch.chdir(inputs.tmp)  # where a template payload would write
    with pytest.raises(error) as info:
        action(inputs)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.S), f"{pattern!r} is not in the message: {message}"
    assert loads == [], f"a model was loaded: {loads}"
    assert not (inputs.tmp / PWNED).exists(), "a template ran a command"


def test_the_table_is_large_and_the_spy_sees_a_model_load(loads, tiny_folder):
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)
    transformers.AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert loads and str(tiny_folder) in loads[0]
