"""The model card: TRL's card made to load (base_model, library_name, a quick start that works for an adapter) and
its SOFT section (round table, stop, engine, settings, behaviour verdict, premise check)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from ..behaviour.evaluate import format_premise
from ..models import (
    EMBEDDED_HUB_ID,
    EMBEDDED_SOURCE_NOTE,
    base_model_of,
    hub_id_of,
    is_embedded_copy,
    record_embedded_base,
)
from ..security import redact_text
from ..state import SOFTState, atomic_write_text
from .table import format_round_table
from .verdict import behaviour_verdict, format_stop_line

SOFT_CITATION = """\
@article{wang2024soft,
    title   = {{Step-On-Feet Tuning: Scaling Self-Alignment of LLMs via Bootstrapping}},
    author  = {Haoyu Wang and Guozheng Ma and Ziqiao Meng and Zeyu Qin and Li Shen and Zhong Zhang and Bingzhe Wu
               and Liu Liu and Yatao Bian and Tingyang Xu and Xueqian Wang and Peilin Zhao},
    journal = {arXiv preprint arXiv:2402.07610},
    year    = 2024
}"""

ADAPTER_QUICK_START = """```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

# Loads the base model this adapter names ({base}), then the adapter on it.
model = AutoPeftModelForCausalLM.from_pretrained("{ref}")
tokenizer = AutoTokenizer.from_pretrained("{ref}")
question = "If you had a time machine, but could only go to the past or the future once and never return, which would you choose and why?"
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": question}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def finish_model_card(folder: Path, base_id: str | None, ref: str, base_note: str | None = None) -> None:
    """Make the card TRL wrote in `folder` load: `base_model` (the hub id, not a local path or None), `library_name:
    peft` for an adapter with a quick start that loads it on its base (`ref`: the hub id the user pushes to, else
    the folder), no stray metadata (TRL's `licence: license`); and a saved adapter names the hub id as its base
    (`adapter_config.json`), so it loads on another machine. `base_note` says where a converted base came from."""
    folder = Path(folder)
    readme, adapter_config = folder / "README.md", folder / "adapter_config.json"
    card = ModelCard.load(readme)
    adapter = adapter_config.is_file()
    data = card.data
    if base_id:
        data.base_model = base_id
    data.library_name = "peft" if adapter else "transformers"
    for stray in ("licence",):
        data.__dict__.pop(stray, None)
    text = card.text
    link = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else "its base model"
    text = text.replace("[None](https://huggingface.co/None)", link + (f" ({base_note})" if base_note else ""))
    if adapter:
        quick = ADAPTER_QUICK_START.format(base=base_id or "the base model", ref=ref)
        text = re.sub(r"(## Quick start\n\n)```python\n.*?```", lambda m: m.group(1) + quick, text, count=1, flags=re.S)
    else:
        text = text.replace('model="None"', f'model="{ref}"')
    card.text = text
    atomic_write_text(readme, str(card))
    if adapter and base_id:
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_id
        atomic_write_text(adapter_config, json.dumps(config, indent=2, sort_keys=True) + "\n")


def model_card_section(state: SOFTState, settings: dict[str, Any]) -> str:
    """The model card's SOFT part: the round table, the stop, the engine, the settings, the behaviour verdict and
    the premise check."""
    rendered = ", ".join(f"`{k}={redact_text(str(v))}`" for k, v in settings.items() if v is not None)
    table = format_round_table(state.history, state.base_metrics)
    stop, verdict = format_stop_line(state), behaviour_verdict(state)
    premise = (state.base_metrics or {}).get("premise")
    behaviour = (f"\n## Behaviour\n\n{verdict}\n\n" if verdict else "") + (
        f"Premise check before round 1 (starting model):\n\n```\n{format_premise(premise)}\n```\n"
        if premise else ""
    )
    return (
        f"\n## SOFT rounds\n\nTrained with trl-soft for {state.rounds_completed} round(s). Round 0 is "
        "the starting model; `val NLL` is the mean negative log-likelihood per token of the reference answers of "
        f"the validation set (lower is better).\n\n{table}\n\n{stop + chr(10) + chr(10) if stop else ''}"
        f"Generation engine: {redact_text(state.engine)}\n\nSettings: {rendered}\n{behaviour}"
    )


def complete_model_card(folder: Path, model, ref: str, state: SOFTState | None, fingerprint: dict) -> None:
    """The card TRL wrote in `folder`, made to load (`finish_model_card`: the base model's hub id, `library_name`, the
    quick start, the adapter's base) and, for a run, followed by its SOFT settings and round table."""
    trained_on = base_model_of(model)
    base = hub_id_of(trained_on)
    finish_model_card(folder, base, ref, EMBEDDED_SOURCE_NOTE if base == EMBEDDED_HUB_ID else None)
    if (folder / "adapter_config.json").is_file() and is_embedded_copy(trained_on):
        record_embedded_base(folder)  # loaded here on the copy it was trained on, not looked for on the hub
    if state is not None:
        with open(folder / "README.md", "a", encoding="utf-8") as handle:
            handle.write(model_card_section(state, fingerprint))
