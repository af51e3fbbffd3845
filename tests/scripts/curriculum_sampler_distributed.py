"""Run under `accelerate launch --num_processes N`: build a SOFTTrainer on a tiny random Llama, give it a round
dataset with known difficulty scores, and record the index batches each rank's real training DataLoader yields
(checking that the tensors it yields are those rows). The main process writes everything as JSON to argv[1]."""

import json
import sys
from pathlib import Path

from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_llama, prompt_dataset, tiny_config  # noqa: E402
from trl_soft import SOFTTrainer  # noqa: E402
from trl_soft.distributed import process_state  # noqa: E402
from trl_soft.rounds import Round  # noqa: E402
from trl_soft.state import round_paths  # noqa: E402

SCORES = [((i * 7) % 16) / 2 for i in range(16)]  # a permutation of 0, 0.5, ..., 7.5


def main(output: str, tokenizer_path: str, bucket_size: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    args = tiny_config(Path(output).parent / "run", per_device_train_batch_size=2,
                       curriculum_bucket_size=bucket_size or None)
    trainer = SOFTTrainer(model=make_tiny_llama(tokenizer), args=args, train_dataset=prompt_dataset(12),
                          processing_class=tokenizer)
    pairs = [(f"Prompt {i}", f"Answer number {i}.") for i in range(len(SCORES))]
    examples = [trainer.formatter.engraving_example(p, r) for p, r in pairs]
    _, order = args.settings.curriculum.rank(lambda p, r, c: SCORES, *zip(*pairs), None, args.seed + 1)
    trainer.round = Round(1, round_paths(args.output_dir, 1), args.seed + 1, list(range(len(pairs))),
                          [p for p, _ in pairs], [[] for _ in pairs], responses=[r for _, r in pairs],
                          filter_reasons=[None] * len(pairs), train_order=order)
    trainer.train_dataset = trainer._prepare_dataset(Dataset.from_list(examples), tokenizer, args, False, None, "t")
    loader = trainer.get_train_dataloader()
    index_batches = [list(batch) for batch in loader.batch_sampler]
    for indices, batch in zip(index_batches, loader):  # the sampler is deterministic: both passes agree
        for row, index in enumerate(indices):
            expected = trainer.train_dataset[index]["input_ids"]
            assert batch["input_ids"][row][: len(expected)].tolist() == expected, (index, row)
    sampler = loader.batch_sampler
    while not hasattr(sampler, "order"):  # BatchSamplerShard -> BatchSampler -> CurriculumSampler
        sampler = getattr(sampler, "batch_sampler", None) or sampler.sampler
    state = process_state()
    ranks = gather_object([{"rank": state.process_index, "batches": index_batches, "order": sampler.order}])
    if state.is_main_process:
        Path(output).write_text(json.dumps({"processes": state.num_processes, "world_size": args.world_size,
                                            "seed": args.seed, "scores": SCORES, "ranks": ranks}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
