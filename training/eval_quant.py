"""Which quantisation a GGUF holds, and the base at the tuned model's quantisation.

The comparison is fair only at one quantisation: the tuned file is the pipeline's export (Q8_0
for the demo), the packaged base is Q4_1. The tuned model was trained from the base's
dequantized weights, so the base re-quantized to the tuned type (llama.cpp, requantize allowed)
holds the same weights at the same precision, which is what the evaluation compares.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from training.export import FTYPES


def quant_of(gguf: Path) -> str:
    """The file's `general.file_type` by name (Q4_1, Q8_0, ...), or 'unknown'.

    Read by llama.cpp, vocabulary only (milliseconds; gguf's reader walks every tensor).
    """
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # the loader prints every metadata key otherwise
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        return "unknown"
    try:
        buf = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
    finally:
        llama_cpp.llama_model_free(model)
    if size < 0:
        return "unknown"
    value = int(buf.value.decode())
    names = {v: k for k, v in FTYPES.items()}
    return names.get(value, f"file_type {value}")


def requantized(src: Path, qtype: str, dest_dir: Path) -> Path:
    """`src` at `qtype` under `dest_dir` (made once; reused while newer than `src`)."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # one line per tensor otherwise
    dest = dest_dir / f"{src.stem}.as-{qtype}.gguf"
    if dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.allow_requantize = True
    try:
        code = llama_cpp.llama_model_quantize(
            str(src).encode(), str(tmp).encode(), ctypes.byref(params)
        )
        if code != 0 or not tmp.is_file():
            raise RuntimeError(f"llama_model_quantize({src.name} -> {qtype}) failed with {code}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def same_quant_base(base: Path, tuned: Path, dest_dir: Path) -> tuple[Path, str]:
    """The base at the tuned file's quantisation where it differs, and a note for the output
    ('' when both were already the same, the reason when they stay different)."""
    have, want = quant_of(base), quant_of(tuned)
    if have == want:
        return base, ""
    if want not in FTYPES:
        return base, f"base {have} vs tuned {want}: not the same quantisation"
    try:
        return requantized(base, want, dest_dir), f"base re-quantized {have} -> {want}"
    except (RuntimeError, OSError) as exc:
        return base, f"base {have} vs tuned {want}: not the same quantisation ({exc})"
