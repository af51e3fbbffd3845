"""The package's one import of vLLM: `vllm` and the submodules trl-soft uses, imported when this module is.

vLLM is optional (the `vllm` extra) and importing it takes seconds and sets up its logging, so nothing imports this
module at its own import: `choice.load_vllm()` does, on first use, and everything that talks to vLLM asks it for the
module (`load_vllm().LLM`, `load_vllm().platforms.current_platform`, ...), so a test's stand-in set on `vllm` is seen.
"""

import vllm
import vllm.inputs
import vllm.lora.request
import vllm.model_executor.layers.quantization
import vllm.platforms

__all__ = ["vllm"]
