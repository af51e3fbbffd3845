"""Optional vLLM generation backend (`generation_backend="vllm"`, extra `trl-soft[vllm]`, CUDA only).

It sits behind the same interface as the HF path (`prompts in, GenerationResult out, input order`) and is built on
TRL's own `trl.generation.vllm_generation.VLLMGeneration`, the class GRPO and the other online trainers use:

- `vllm_mode="server"`: a separate `trl vllm-serve --model <base model>` process (on its own GPUs) generates; the
  main process sends it every rank's prompts and broadcasts the current weights to it;
- `vllm_mode="colocate"`: every process runs its own vLLM engine on the training GPU(s).

Weights are pushed to vLLM before the first generation after they change (once per round, and after a best-round
restore). For a PEFT model TRL merges the LoRA weights into the base weights it sends, so vLLM always sees the
round's model. QLoRA is not the default path: merging LoRA into 4-bit weights for the sync is lossy and has open
upstream issues, so the HF backend (which generates from the 4-bit base + adapter directly) is used unless vLLM is
asked for.

Nothing here runs without vLLM and CUDA; see docs/scaling.md for what was checked on which machine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from .distributed import map_sharded
from .generation import GenerationResult, GenerationSettings

VLLM_INSTALL_HINT = (
    "vLLM is not installed. Install it with `pip install 'trl-soft[vllm]'` (Linux with CUDA GPUs only), or use the "
    "default `generation_backend='hf'`."
)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm_available() -> None:
    """Raise before any model is loaded when vLLM generation is asked for but cannot run."""
    if not vllm_available():
        raise ImportError(f"`generation_backend='vllm'`: {VLLM_INSTALL_HINT}")


class VLLMBackend:
    """Generates a round's answers with vLLM, keeping vLLM's weights in step with the trained model."""

    def __init__(self, model, accelerator, tokenizer, args):
        check_vllm_available()
        from trl.generation.vllm_generation import VLLMGeneration

        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.engine = VLLMGeneration(
            model=model,
            accelerator=accelerator,
            processing_class=tokenizer,
            mode=args.vllm_mode,
            server_base_url=args.vllm_server_base_url,
            server_host=args.vllm_server_host,
            server_port=args.vllm_server_port,
            server_timeout=args.vllm_server_timeout,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        )
        self.synced_version: int | None = None

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings, weights_version: int
    ) -> list[GenerationResult]:
        """Continue every prompt; every process calls this with the full list and gets the full list back.

        `map_sharded` gives each rank an equal-sized slice (ceil(P / N), short ones padded with repeats that are
        dropped again): in server mode TRL hands the completions back to the ranks by position, so they must be.
        """
        if self.synced_version != weights_version:
            self.engine.sync_weights()
            self.synced_version = weights_version
        return map_sharded(prompts, lambda shard: self._generate_local(shard, settings))

    def _generate_local(self, prompts: list[str], settings: GenerationSettings) -> list[GenerationResult]:
        engine = self.engine
        engine.max_completion_length = settings.max_new_tokens
        engine.temperature = settings.temperature  # 0 = greedy in vLLM as here
        engine.top_p = settings.top_p if settings.temperature > 0 else 1.0
        engine.generation_kwargs = {"stop": list(settings.stop_strings) or None, "seed": settings.seed}
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        _, completion_ids, _, _ = engine.generate(prompts=prompt_ids, images=None, num_generations=1)
        eos = self.tokenizer.eos_token_id
        results = []
        for ids in completion_ids:
            ended_by_eos = bool(ids) and ids[-1] == eos
            kept = ids[:-1] if ended_by_eos else ids
            finished = ended_by_eos or len(ids) < settings.max_new_tokens  # vLLM stops early only on EOS/stop
            results.append(GenerationResult(self.tokenizer.decode(kept), len(kept), finished))
        return results
