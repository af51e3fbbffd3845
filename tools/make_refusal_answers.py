"""Generate the unlabelled answers behind `tests/data/refusal_labels.jsonl`.

The embedded SmolLM2-135M-Instruct answers a fixed set of requests (HarmBench, three Do-Not-Answer risk areas, the
project's benign and unknowable behaviour prompts) in four settings: zero-shot or principle-driven prompt, greedy or
sampled decoding. Each output row names its request by `source` + `index` only (the text of HarmBench and
Do-Not-Answer requests is never written out) and carries the generated `answer`.

    .venv/bin/python tools/make_refusal_answers.py /tmp/refusal_answers.jsonl

Every request is answered in all four settings. `keep` marks the one setting per request (a rotation over the
settings by position within the source) that the labelled set was built from; `subset` says why a row is in the
labelled set: "rotation" (the kept rows), "dna_zero_shot_greedy" (every other zero-shot greedy Do-Not-Answer answer,
added to get more refusals), or null. The labelled set also holds a few rows picked by reading, to reach its quota of
refusals: the pool's other harmful-source answers that contain the assistant's own apology, decline or claimed
inability. Runs on vLLM's CPU build (a few minutes on 2 CPU cores; longer when they are busy).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SHARED = Path(os.environ.get("TRL_SOFT_SHARED_DATA", "/work/shared/data"))
ASSETS = Path(__file__).resolve().parent.parent / "trl_soft" / "assets"
DNA_AREAS = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")
SETTINGS = ("zero_shot/greedy", "principled/greedy", "zero_shot/sampled", "principled/sampled")
STOP = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
MAX_TOKENS = 96
SEED = 0


def _jsonl_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def requests() -> list[tuple[str, int, str]]:
    """(source, index, request text): the fixed selection of requests, in a fixed order."""
    out: list[tuple[str, int, str]] = []
    harmbench = (SHARED / "harmbench" / "harmbench_standard.txt").read_text(encoding="utf-8").splitlines()
    out += [("harmbench", i, harmbench[i]) for i in range(0, len(harmbench), 10)]
    for area in DNA_AREAS:
        prompts = _jsonl_prompts(SHARED / "donotanswer" / f"{area}.jsonl")
        out += [(f"donotanswer/{area}", i, prompts[i]) for i in range(0, len(prompts), 12)]
    benign = _jsonl_prompts(ASSETS / "behaviour_benign.jsonl")
    out += [("benign", i, benign[i]) for i in range(0, len(benign), 2)]
    unknowable = _jsonl_prompts(ASSETS / "behaviour_unknowable.jsonl")
    out += [("unknowable", i, unknowable[i]) for i in range(len(unknowable))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="JSONL file to write the answers to")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from trl_soft.models import resolve_model_path
    from trl_soft.prompting import ExemplarSampler, PromptFormatter, load_exemplars, load_principles

    path = resolve_model_path("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path)
    formatter = PromptFormatter(tokenizer, load_principles(None), "auto")
    sampler = ExemplarSampler(load_exemplars(None), 2, "random", 42)
    llm = LLM(
        model=path, dtype="bfloat16", enforce_eager=True, enable_chunked_prefill=False, max_model_len=2048, seed=SEED
    )

    items = requests()
    position: dict[str, int] = {}
    rows, prompts, params = [], [], []
    for i, (source, index, request) in enumerate(items):
        pos = position.get(source, 0)
        position[source] = pos + 1
        kept = SETTINGS[pos % len(SETTINGS)]
        for s, setting in enumerate(SETTINGS):
            style, decoding = setting.split("/")
            if style == "zero_shot":
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
                )
            else:
                text = formatter.generation_prompt(request, sampler.sample(1, i))
            if decoding == "greedy":
                sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=STOP)
            else:
                sp = SamplingParams(
                    temperature=0.7, top_p=0.9, max_tokens=MAX_TOKENS, stop=STOP, seed=SEED * 100_000 + i * 10 + s
                )
            if setting == kept:
                subset = "rotation"
            elif source.startswith("donotanswer/") and setting == "zero_shot/greedy":
                subset = "dna_zero_shot_greedy"
            else:
                subset = None
            rows.append(
                {"source": source, "index": index, "setting": setting, "keep": setting == kept, "subset": subset}
            )
            prompts.append(text)
            params.append(sp)

    outputs = llm.generate(prompts, params)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as fh:
        for row, output in zip(rows, outputs):
            row["answer"] = formatter.extract_response(output.outputs[0].text)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} answers ({sum(r['keep'] for r in rows)} kept) to {args.output}")


if __name__ == "__main__":
    main()
