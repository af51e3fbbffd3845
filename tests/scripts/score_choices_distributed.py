"""Run under `accelerate launch --num_processes N --cpu`: score multiple-choice requests and validation pairs with a
tiny random Llama and write the results (from the main process) to the JSON path given as the first argument."""

import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_llama  # noqa: E402
from trl_soft.distributed import process_state  # noqa: E402
from trl_soft.evaluation.likelihood import score_completions  # noqa: E402
from trl_soft.evaluation.multiple_choice import ChoiceRequest, score_choices  # noqa: E402

REQUESTS = [
    ChoiceRequest(f"Q: question number {i} about things?\nA:", tuple(f" answer {j} to {i}" for j in range(i % 3 + 2)))
    for i in range(7)
]
PAIRS = [(f"Prompt {i}:", f" completion number {i}") for i in range(5)]


def main(output: str, tokenizer_path: str) -> None:
    state = process_state()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = make_tiny_llama(tokenizer)
    choices = score_choices(model, tokenizer, REQUESTS, max_batch=2)
    completions = [s.log_likelihood for s in score_completions(model, tokenizer, PAIRS, batch_size=2)]
    if state.is_main_process:
        with open(output, "w") as handle:
            json.dump({"processes": state.num_processes, "choices": choices, "completions": completions}, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
