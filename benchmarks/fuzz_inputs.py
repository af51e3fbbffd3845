"""Fuzz everything a run does before a model loads (issue 27), and count what happens.

Hypothesis generates five kinds of input and throws each at the code that reads or checks it:

- `yaml`: YAML configs (random fields of `SOFTConfig` and TRL's with random values, an `env:` block, damaged text),
  through `check_config_env` and `TrlParser.parse_args_and_config` (every settings check of `SOFTConfig`);
- `argv`: command lines of `trl-soft train` (flags, known or not, with random values), through the same parser;
- `jsonl`: prompt, validation, exemplar and principle files (random bytes, JSON Lines, JSON documents), through
  their readers (`check_prompt_file`, `load_validation_set`, `load_exemplars`, `load_principles`);
- `manifest`: `soft_state.json` files (random JSON, or a manifest with fields of random types), through the resume
  check (`check_output_dir`) and `trl-soft report`;
- `folder`: run folders holding round folders, leftovers, lock records and links (symbolic, hard, to a parent) to a
  folder outside, through the start of a run (`RunFolder.check` and `open`, with or without overwrite / resume).

Each input ends in one outcome: `error` (an error of the kinds the checks raise, whose message names the field, flag,
file line or path to fix), `accepted`, `traceback` (anything else), `hang` (no answer within `--timeout` seconds) or
`outside` (a file outside the run folder changed: the link targets and the input files are compared byte by byte
before and after). The table is printed at the end; the inputs of every traceback, hang and outside change are
printed too, so each can become a test. Nothing is sent anywhere (the hub libraries are offline, no URL is
contacted).

    python benchmarks/fuzz_inputs.py --examples 1000 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                      "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}.items():
    os.environ[_name] = _value

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

OUTCOMES = ("error", "accepted", "traceback", "hang", "outside")
KINDS = ("yaml", "argv", "jsonl", "manifest", "folder")
# A message names what to fix: a `field`, a --flag, a file line, a field of a file, or a path the user gave.
NAMES_THE_FIELD = re.compile(r"`[A-Za-z_][\w.-]*`|--[A-Za-z_]+|line \d+|:\d+|field '|item \d+|'[^']*(/|\\.)[^']*'")


class Hang(BaseException):
    """No answer within the time limit (raised by SIGALRM)."""


def _alarm(signum, frame):
    raise Hang


def snapshot(root: Path) -> dict[str, object]:
    """Every path under `root`, links not followed: its bytes, its link target, or 'dir'."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                out[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[path] = "dir"
            else:
                with open(path, "rb") as handle:
                    out[path] = handle.read()
    return out


class Fuzz:
    """The work area (`outside/`: what links point at, never to change; `inputs/`: the generated files; `runs/`: one
    run folder per input) and the tally."""

    def __init__(self, root: Path, timeout: float):
        self.root, self.timeout = root, timeout
        self.outside = root / "outside"
        self.make_outside()
        self.inputs = root / "inputs"
        self.inputs.mkdir()
        self.runs = root / "runs"
        self.runs.mkdir()
        self.count = 0
        self.tally: dict[str, Counter] = {kind: Counter() for kind in KINDS}
        self.failures: list[tuple[str, str, str]] = []
        self.errors: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self.seconds: Counter = Counter()

    def make_outside(self) -> None:
        """A user's folder beside the runs (what the generated links point at), made afresh."""
        shutil.rmtree(self.outside, ignore_errors=True)
        (self.outside / "proj" / "checkpoints" / "checkpoint-7").mkdir(parents=True)
        (self.outside / "proj" / "checkpoints" / "checkpoint-7" / "w.bin").write_bytes(b"user weights")
        (self.outside / "proj" / ".notes.tmp").write_text("notes")
        (self.outside / "proj" / "draft.partial").mkdir()
        (self.outside / "authorized_keys").write_text("ssh-ed25519 AAAA user@host\n")
        (self.outside / "soft_state.json").write_text('{"config_hash": "x", "num_rounds": 1}')

    def new_dir(self, base: Path) -> Path:
        self.count += 1
        path = base / f"n{self.count}"
        path.mkdir()
        return path

    def run(self, kind: str, described: str, job, inputs: Path | None = None, scratch: Path | None = None) -> None:
        """`job()` under the time limit, with the environment and the lock registry restored after; its outcome.
        `inputs`: the folder of this input's files (compared too); `scratch`: removed after."""
        from trl_soft import run_folder

        watched = lambda: snapshot(self.outside) | (snapshot(inputs) if inputs else {})  # noqa: E731
        before = watched()
        environ = dict(os.environ)
        held = dict(run_folder._HELD)
        started = time.perf_counter()
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                job()
            outcome, detail = "accepted", ""
        except Hang:
            outcome, detail = "hang", f"no answer within {self.timeout} s"
        except SystemExit as stop:  # argparse: its message (on stderr) names the argument; 0: help was asked for
            text = captured.getvalue()
            named = stop.code == 2 and ("error: argument --" in text or "unrecognized arguments" in text
                                        or "error:" in text)
            outcome = "accepted" if stop.code == 0 else "error" if named else "traceback"
            detail = f"SystemExit({stop.code}): {text.strip()[-300:]}"
        except Exception as err:  # noqa: BLE001 - the tally is the point
            outcome, detail = classify(err)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.environ.clear()
            os.environ.update(environ)
            for key in set(run_folder._HELD) - set(held):
                fd, _ = run_folder._HELD.pop(key)
                with contextlib.suppress(OSError):
                    os.close(fd)
        if watched() != before:
            outcome, detail = "outside", "a file outside the run folder changed"
            self.make_outside()
        for folder in (inputs, scratch):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)  # never follows the links in it
        if outcome == "error":
            self.errors[kind].append(detail)
        self.seconds[kind] += time.perf_counter() - started
        self.tally[kind][outcome] += 1
        if outcome in ("traceback", "hang", "outside"):
            self.failures.append((kind, described[:600], detail[-1500:]))


def classify(err: BaseException) -> tuple[str, str]:
    """`error` for the kinds of error the checks raise whose message names what to fix; `traceback` otherwise."""
    from trl_soft.errors import SOFTFolderError, SOFTLinkError, SOFTLockError, SOFTResumeError

    message = str(err)
    expected = (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
                SOFTFolderError, SOFTResumeError, SOFTLockError, SOFTLinkError)
    if isinstance(err, expected) and NAMES_THE_FIELD.search(message) and "Traceback" not in message:
        return "error", f"{type(err).__name__}: {message[:200]}"
    return "traceback", "".join(traceback.format_exception(err))


# ---- what is generated -----------------------------------------------------------------------------------------------
def _fields():
    from dataclasses import MISSING, fields

    from trl_soft import SOFTConfig
    from trl_soft.scripts.train import SOFTScriptArguments

    own = {f.name: f for f in fields(SOFTConfig)}
    chosen = [n for n in own if n.startswith(("num_", "prompt", "generation_", "vllm_", "judge_", "behaviour_",
                                              "filter", "curriculum", "diagnostics_", "validation_", "benchmark",
                                              "collapse_", "principle", "exemplar", "round_", "keep_", "final_",
                                              "rejection_", "evaluate_", "require_", "restore_", "engraving_",
                                              "use_internal", "truthfulqa_"))]
    chosen += ["learning_rate", "max_steps", "per_device_train_batch_size", "max_length", "seed", "trust_remote_code",
               "model_init_kwargs", "overwrite_output_dir", "hub_token", "report_to", "log_level", "bf16"]
    chosen += [f.name for f in fields(SOFTScriptArguments)]
    defaults = []
    for name in chosen:
        f = own.get(name)
        if f is not None and f.default is not MISSING and f.default is not None:
            defaults.append(f.default)
    return sorted(set(chosen)), defaults


FIELDS, DEFAULTS = _fields()
WORDS = ["auto", "none", "hf", "vllm", "server", "colocate", "openai", "rules", "length", "random", "demo", "all",
         "main", "best", "last", "previous", "base", "fixed", "plain", "chat", "harmful", "benign", "unknowable",
         "truthfulqa", "hhh", "float32", "adapter", "merged", "too_short", "MY_JUDGE_KEY", "MY_VLLM_KEY", "HF_TOKEN",
         "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "http://127.0.0.1:8000/v1", "http://10.0.0.2:8000",
         "https://judge.example/v1", "https://u:pw@judge.example/v1", "http://h/v1?api_key=k", "unix:/tmp/x.sock",
         "localhost", "0.0.0.0", "::1", "localhost:8000", "/etc/passwd", "../../outside", "~/x", "", " ", "1,2",
         "a,b,c", "1e-4", "-1", "0", "nan", "inf", "{}", "[]", "null", "true", "\u00e9\u00e8", "x" * 300]
ENV_NAMES = ["HF_HOME", "OMP_NUM_THREADS", "LD_PRELOAD", "ld_library_path", "PYTHONPATH", "PYTHONSTARTUP",
             "VLLM_LOGGING_CONFIG_PATH", "HTTPS_PROXY", "http_proxy", "REQUESTS_CA_BUNDLE", "PYTHONPYCACHEPREFIX",
             "HF_ENDPOINT", "NETRC", "DYLD_INSERT_LIBRARIES", "TRL_SOFT_X", "PATH", "PYTHONWARNINGS"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**9, 10**9), st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(WORDS),
    st.sampled_from(DEFAULTS or [0]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
config_keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS), st.text(min_size=1, max_size=12))


@st.composite
def yaml_configs(draw) -> str:
    config = draw(st.dictionaries(config_keys, values, max_size=7))
    if draw(st.booleans()):
        config["env"] = draw(st.one_of(st.dictionaries(st.sampled_from(ENV_NAMES), st.sampled_from(WORDS), max_size=3),
                                       values))
    config.pop("output_dir", None)
    text = yaml.safe_dump(config, allow_unicode=True)
    if draw(st.integers(0, 9)) == 0:  # damaged text: cut, or random characters in it
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=10))
    return text


@st.composite
def command_lines(draw) -> list[str]:
    argv = []
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(st.one_of(st.sampled_from(FIELDS), st.text(alphabet="abcdefghij_", min_size=1, max_size=10)))
        argv.append(f"--{flag}")
        if draw(st.integers(0, 4)):
            argv.append(str(draw(st.one_of(st.sampled_from(WORDS), st.text(max_size=12),
                                           st.integers(-5, 10**6).map(str)))))
    argv = [a for a in argv if a not in ("--output_dir", "--config", "--push_to_hub", "--hub_model_id")]
    return argv


@st.composite
def data_files(draw) -> tuple[str, str, bytes]:
    reader = draw(st.sampled_from(["prompts", "validation", "exemplars", "principles"]))
    suffix = {"prompts": draw(st.sampled_from([".jsonl", ".json", ".csv", ".txt"])), "validation": ".jsonl",
              "exemplars": ".jsonl", "principles": draw(st.sampled_from([".json", ".txt", ".md"]))}[reader]
    shape = draw(st.integers(0, 3))
    if shape == 0:
        body = draw(st.binary(max_size=200))
    elif shape == 1:
        rows = draw(st.lists(st.one_of(values, st.fixed_dictionaries(
            {"prompt": values, "question": values, "answer": values, "response": values})), max_size=6))
        body = "\n".join(json.dumps(r, default=str) for r in rows).encode()
    elif shape == 2:
        body = json.dumps(draw(values), default=str).encode()
    else:
        body = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    return reader, suffix, body


MANIFEST_FIELDS = ["config_hash", "num_rounds", "rounds_completed", "history", "base_metrics", "stopped_early",
                   "stop_reason", "final_round", "collapse_round", "unmeasured", "engine", "fingerprint", "version",
                   "created", "updated"]


@st.composite
def manifests(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.one_of(st.binary(max_size=100), values.map(lambda v: json.dumps(v, default=str).encode())))
    manifest = {"config_hash": "h", "num_rounds": 2, "rounds_completed": 1, "history": [{"round": 1, "kept": 3}],
                "fingerprint": {"num_rounds": 2}, "version": 2, "created": 1.0, "updated": 1.0}
    for name in draw(st.lists(st.sampled_from(MANIFEST_FIELDS), max_size=3)):
        manifest[name] = draw(values)
    if draw(st.booleans()):
        manifest["history"] = draw(st.lists(st.dictionaries(st.sampled_from(["round", "kept", "samples", "filtered",
                                                                              "validation_nll", "seconds_round"]),
                                                            values, max_size=4), max_size=3))
    return json.dumps(manifest, default=str, allow_nan=True).encode()


ENTRY_NAMES = ["round_1", "round_2", "round_01", "round_x", "final_model", "summary.md", ".summary.md.ab12.tmp",
               "final_model.partial", ".soft_state.json.x.tmp", "checkpoints", "notes.txt", "engine_weights",
               "vllm_server.log", "judge_cache.jsonl", ".write-test-123", "report.html", "soft_state.json", ".soft.lock"]
INNER_NAMES = ["checkpoints", "model", ".metrics.json.a.tmp", "model.partial", "generations.jsonl", "metrics.json"]
ENTRY_KINDS = ["file", "dir", "link_dir", "link_file", "link_parent", "link_missing", "hardlink"]


@st.composite
def run_folders(draw) -> dict:
    return {
        "manifest": draw(st.sampled_from(["none", "good", "link", "hardlink"])),
        "lock": draw(st.sampled_from(["none", "plain", "link", "hardlink"])),
        "entries": draw(st.lists(st.tuples(st.sampled_from(ENTRY_NAMES), st.sampled_from(ENTRY_KINDS),
                                           st.lists(st.tuples(st.sampled_from(INNER_NAMES),
                                                              st.sampled_from(ENTRY_KINDS + ["ckpt", "ckpt_marked"])),
                                                    max_size=3)), max_size=5)),
        "overwrite": draw(st.booleans()),
        "resume": draw(st.booleans()),
        "folder_is_link": draw(st.integers(0, 5)) == 0,
    }


# ---- what each input is thrown at ------------------------------------------------------------------------------------
def parse_train(argv: list[str]) -> None:
    from trl_soft.config_file import check_config_env
    from trl_soft.scripts.train import make_parser

    make_parser("trl-soft train").parse_args_and_config(args=check_config_env(argv))


def read_file(reader: str, path: Path) -> None:
    from trl_soft.data import LOCAL_FORMATS, check_prompt_file, load_validation_set
    from trl_soft.prompting import load_exemplars, load_principles

    if reader == "prompts":
        if path.suffix.lower() in LOCAL_FORMATS:
            check_prompt_file(path)
    elif reader == "validation":
        load_validation_set(str(path))
    elif reader == "exemplars":
        load_exemplars(str(path))
    else:
        load_principles(str(path))


def resume_check(out: Path) -> None:
    from trl_soft.cli import main
    from trl_soft.run_folder import check_output_dir

    check_output_dir(out, {"num_rounds": 2}, "h", overwrite=False, resume=True, same_prompts=lambda *a: True)
    if main(["report", str(out)]) != 0:
        raise ValueError("`output_dir`: trl-soft report refused it (exit code 2, message printed)")


def build_folder(fuzz: Fuzz, spec: dict) -> Path:
    base = fuzz.new_dir(fuzz.runs)
    out = base / "out"
    out.mkdir()
    for name, kind, inner in spec["entries"]:
        make_entry(out / name, kind, fuzz, base)
        if kind == "dir" and not os.path.islink(out / name) and os.path.isdir(out / name):  # (a name given twice)
            for inner_name, inner_kind in inner:
                target = out / name / inner_name
                if os.path.lexists(target):  # never built through a link made just before
                    continue
                if inner_kind in ("ckpt", "ckpt_marked"):
                    (target / "checkpoint-5").mkdir(parents=True)
                    if inner_kind == "ckpt_marked":
                        (target / "checkpoint-5" / ".soft-checkpoint-complete").write_text('{"loss_sum": 1}')
                else:
                    make_entry(target, inner_kind, fuzz, base)
    for name, how in (("soft_state.json", spec["manifest"]), (".soft.lock", spec["lock"])):
        path = out / name
        with contextlib.suppress(FileExistsError, IsADirectoryError, OSError):
            if path.is_symlink() or path.is_dir():
                continue
            if how in ("good", "plain"):
                content = ('{"config_hash": "h", "num_rounds": 2, "fingerprint": {"num_rounds": 2}}'
                           if name == "soft_state.json" else "")
                path.write_text(content)
            elif how == "link":
                path.symlink_to(fuzz.outside / ("soft_state.json" if name == "soft_state.json" else "authorized_keys"))
            elif how == "hardlink":
                os.link(fuzz.outside / ("soft_state.json" if name == "soft_state.json" else "authorized_keys"), path)
    if spec["folder_is_link"]:
        link = base / "via_link"
        link.symlink_to(out)
        return link
    return out


def make_entry(path: Path, kind: str, fuzz: Fuzz, base: Path) -> None:
    with contextlib.suppress(FileExistsError, OSError):
        if path.exists() or path.is_symlink():
            return
        if kind == "file":
            path.write_text("x")
        elif kind == "dir":
            path.mkdir()
        elif kind == "link_dir":
            path.symlink_to(fuzz.outside / "proj")
        elif kind == "link_file":
            path.symlink_to(fuzz.outside / "authorized_keys")
        elif kind == "link_parent":
            path.symlink_to("..")
        elif kind == "link_missing":
            path.symlink_to(fuzz.outside / "nothing-here")
        elif kind == "hardlink":
            os.link(fuzz.outside / "authorized_keys", path)


def start_run(out: Path, overwrite: bool, resume: bool) -> None:
    from trl_soft.run_folder import RunFolder

    folder = RunFolder(out)
    try:
        folder.check({"num_rounds": 2}, "h", overwrite, resume, lambda *a: True)
        folder.open({"num_rounds": 2}, "h", 2, resume, overwrite)
    finally:
        folder.release()


# ---- the driver ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="inputs generated per kind (5 kinds)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis's seed (the same inputs each time)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds an input may take before it is a hang")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds of input, comma-separated")
    parser.add_argument("--show-errors", type=int, default=0, help="print this many clear errors of each kind")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="trl-soft-fuzz-"))
    fuzz = Fuzz(root, args.timeout)
    common = settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))

    @seed(args.seed)
    @common
    @given(yaml_configs(), st.booleans())
    def throw_yaml(text, with_flags):
        folder, scratch = fuzz.new_dir(fuzz.inputs), fuzz.new_dir(fuzz.runs)
        path = folder / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        argv = ["--config", str(path), "--output_dir", str(scratch / "out"), "--report_to", "none"]
        fuzz.run("yaml", text, lambda: parse_train(argv + (["--allow_loader_env"] if with_flags else [])), folder,
                 scratch)

    @seed(args.seed)
    @common
    @given(command_lines())
    def throw_argv(flags):
        scratch = fuzz.new_dir(fuzz.runs)
        argv = [*flags, "--output_dir", str(scratch / "out"), "--report_to", "none"]
        fuzz.run("argv", " ".join(flags), lambda: parse_train(argv), None, scratch)

    @seed(args.seed)
    @common
    @given(data_files())
    def throw_jsonl(file):
        reader, suffix, body = file
        folder = fuzz.new_dir(fuzz.inputs)
        path = folder / f"data{suffix}"
        path.write_bytes(body)
        fuzz.run("jsonl", f"{reader} {suffix} {body[:300]!r}", lambda: read_file(reader, path), folder)

    @seed(args.seed)
    @common
    @given(manifests())
    def throw_manifest(body):
        scratch = fuzz.new_dir(fuzz.runs)
        out = scratch / "out"
        out.mkdir()
        (out / "soft_state.json").write_bytes(body)
        fuzz.run("manifest", body[:400].decode("utf-8", "replace"), lambda: resume_check(out), None, scratch)

    @seed(args.seed)
    @common
    @given(run_folders())
    def throw_folder(spec):
        out = build_folder(fuzz, spec)
        fuzz.run("folder", json.dumps(spec), lambda: start_run(out, spec["overwrite"], spec["resume"]), None,
                 out.parent)

    throws = {"yaml": throw_yaml, "argv": throw_argv, "jsonl": throw_jsonl, "manifest": throw_manifest,
              "folder": throw_folder}
    started = time.perf_counter()
    for kind in args.kinds.split(","):
        throws[kind]()
    total = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)

    print(f"\n{sum(sum(c.values()) for c in fuzz.tally.values())} inputs in {total:.0f} s (seed {args.seed}, "
          f"{args.examples} per kind, {args.timeout:g} s before a hang)\n")
    print("| input | " + " | ".join(OUTCOMES) + " | seconds |")
    print("|---|" + "---:|" * (len(OUTCOMES) + 1))
    for kind in args.kinds.split(","):
        counts = fuzz.tally[kind]
        print(f"| {kind} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + f" | {fuzz.seconds[kind]:.0f} |")
    totals = Counter()
    for counts in fuzz.tally.values():
        totals.update(counts)
    print("| **all** | " + " | ".join(f"**{totals[o]}**" for o in OUTCOMES) + f" | {total:.0f} |")
    for kind in args.kinds.split(",") if args.show_errors else ():
        step = max(1, len(fuzz.errors[kind]) // args.show_errors)
        print(f"\n---- clear errors of {kind}:\n" + "\n".join(fuzz.errors[kind][::step][:args.show_errors]))
    for kind, described, detail in fuzz.failures[:30]:
        print(f"\n---- {kind}: {described!r}\n{detail}")
    return 1 if any(totals[o] for o in ("traceback", "hang", "outside")) else 0


if __name__ == "__main__":
    sys.exit(main())
