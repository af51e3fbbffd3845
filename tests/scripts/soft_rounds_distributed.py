"""Run under `accelerate launch --num_processes N`: two greedy SOFT rounds on a tiny random Llama (the same seed
and data whatever N). Every rank records a fingerprint of the round dataset it trained on and how many prompts it
generated for; the main process writes them, with the world size, to argv[2] (the run's files go to argv[1])."""

import hashlib
import json
import sys
from pathlib import Path

from accelerate.utils import gather_object
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_llama, prompt_dataset, tiny_config  # noqa: E402
from trl_soft import SOFTCallback, SOFTTrainer  # noqa: E402
from trl_soft.distributed import process_state  # noqa: E402


class RecordRoundData(SOFTCallback):
    def __init__(self):
        self.rounds = {}

    def on_round_metrics(self, args, round_index, metrics, trainer=None, **kwargs):
        dataset = trainer.train_dataset
        # the round dataset and the order it is trained in (the Round record's, which the sampler reads)
        columns = [[list(ids) for ids in dataset["input_ids"]], trainer.round.sampler_order()]
        digest = hashlib.sha256(json.dumps(columns).encode()).hexdigest()
        self.rounds[round_index] = {"dataset": digest, "rows": len(dataset), "steps": metrics["train_steps"]}


def main(output_dir: str, result_path: str, tokenizer_path: str) -> None:
    state = process_state()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    per_device = 4 // state.num_processes  # the same global batch (4) whatever the number of processes
    recorder = RecordRoundData()
    trainer = SOFTTrainer(
        model=make_tiny_llama(tokenizer),
        args=tiny_config(output_dir, per_device_train_batch_size=per_device, collapse_metric="none",
                         generation_max_new_tokens=10, diagnostics_num_prompts=3,
                         # one prompt per forward, no shared-prefix split: the arithmetic of every answer is the same
                         # whichever process generates it, so greedy answers can be compared exactly
                         generation_batch_size=1, generation_prefix_cache=False),
        train_dataset=prompt_dataset(14),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    trainer.train()
    ranks = gather_object([{"rank": state.process_index, "world_size": trainer.args.world_size,
                            "rounds": recorder.rounds}])
    if state.is_main_process:
        Path(result_path).write_text(json.dumps({"processes": state.num_processes, "ranks": ranks}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
