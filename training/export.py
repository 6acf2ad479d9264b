"""Merge the LoRA adapter, write a float GGUF with llama.cpp's converter, quantize it.

The converter is llama.cpp's own `convert_hf_to_gguf.py` (maintained, knows every architecture's
tensor layout and tokenizer). It ships only in the llama-cpp-python *source* distribution, so on
first use the pieces it needs (the script, `conversion/`, `gguf-py/`) are unpacked from that sdist
into a user cache. Every file is written to a temporary name and moved into place with
`os.replace`, so a failed export leaves the previous model intact.

The prompt contract travels with the model: the exported GGUF carries `payphone.prompt_style`
("tag" or "full", read from the system messages of the training data), and the phone sends
that form of the persona prompt (`llm.prompt_style = "auto"`), in-process or through Ollama.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from payphone.demo_gguf import llama_quantize
from payphone.llm.prompt_style import PROMPT_STYLE_KEY, PromptStyle
from payphone.log import get_logger
from training.base_model import hf_folder, replace_dir, resolve, save_folder
from training.config import TrainingConfig
from training.train import Paths

log = get_logger(__name__)

CONVERT_SCRIPT = "convert_hf_to_gguf.py"
VENDOR_PARTS = (CONVERT_SCRIPT, "conversion", "gguf-py")
LLAMA_CPP_ENV = "PAYPHONE_LLAMA_CPP_DIR"

# llama.cpp's `llama_ftype` numbers for the types we offer
FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q3_K_M": 12, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
    "BF16": 32,
}  # fmt: skip


class ExportError(RuntimeError):
    """The export failed; the previous model files are untouched."""


@dataclass(frozen=True)
class ExportResult:
    """The files one export wrote."""

    float_gguf: Path | None
    gguf: Path
    fallbacks: list[str]
    prompt_style: PromptStyle | None = None  # written into the GGUF as payphone.prompt_style


# --- llama.cpp's converter ---------------------------------------------------------------------


def user_cache() -> Path:
    """`$XDG_CACHE_HOME/payphone-ai` (default `~/.cache/payphone-ai`)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "payphone-ai"


def llama_cpp_version() -> str:
    return metadata.version("llama_cpp_python")


def llama_cpp_dir(cache: Path | None = None) -> Path:
    """A folder holding `convert_hf_to_gguf.py` with its `conversion/` and `gguf-py/`.

    `$PAYPHONE_LLAMA_CPP_DIR` wins (e.g. a llama.cpp checkout); else the user cache, filled on
    first use from the llama-cpp-python sdist of the installed version (pip's cache or the
    package index, through pip).
    """
    override = os.environ.get(LLAMA_CPP_ENV)
    if override:
        folder = Path(override).expanduser()
        if not (folder / CONVERT_SCRIPT).is_file():
            raise ExportError(f"{LLAMA_CPP_ENV}={override}: no {CONVERT_SCRIPT} there")
        return folder
    version = llama_cpp_version()
    folder = (cache or user_cache()) / f"llama.cpp-{version}"
    if all((folder / part).exists() for part in VENDOR_PARTS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        sdist = _download_sdist(version, Path(tmp))
        unpacked = Path(tmp) / "unpacked"
        _extract_vendor(sdist, unpacked)
        replace_dir(unpacked, folder)
    log.info("llama_cpp_vendored", folder=str(folder), version=version)
    return folder


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
        "--no-deps", "--no-binary", ":all:", "-q", "-d", str(dest),
    ]  # fmt: skip
    log.info("llama_cpp_sdist_download", version=version)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise ExportError(
            f"cannot fetch the llama-cpp-python {version} sdist for {CONVERT_SCRIPT}: "
            f"{done.stderr.strip()[-400:]}; fix: set {LLAMA_CPP_ENV} to a llama.cpp checkout"
        )
    return found[0]


def _extract_vendor(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (
                len(parts) > 3
                and parts[1:3] == ("vendor", "llama.cpp")
                and parts[3] in VENDOR_PARTS
            ):
                member.name = str(Path(*parts[3:]))
                members.append(member)
        if not members:
            raise ExportError(f"{sdist.name} has no vendor/llama.cpp/{CONVERT_SCRIPT}")
        tar.extractall(dest, members=members, filter="data")


def convert(model_dir: Path, dest: Path, outtype: str, name: str, llama_dir: Path) -> Path:
    """Run llama.cpp's converter on an HF folder; `dest` appears only when it succeeded."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    cmd = [
        sys.executable, str(llama_dir / CONVERT_SCRIPT), str(model_dir),
        "--outfile", str(tmp), "--outtype", outtype, "--model-name", name,
    ]  # fmt: skip
    log.info("gguf_convert", src=str(model_dir), dest=str(dest), outtype=outtype)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not tmp.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ExportError(
                f"{CONVERT_SCRIPT} failed (exit {done.returncode}) on {model_dir}: "
                + " | ".join(tail)
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --- quantization ------------------------------------------------------------------------------


def quantize(src: Path, dest: Path, qtype: str, threads: int = 0) -> list[str]:
    """Quantize with llama.cpp; returns one line per tensor that fell back to another type."""
    if qtype not in FTYPES:
        raise ExportError(f"export.quant = {qtype!r}: not one of {', '.join(FTYPES)}")
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        try:
            llama_quantize(src, tmp, FTYPES[qtype], qtype, threads=threads)
        except RuntimeError as exc:
            raise ExportError(str(exc)) from exc
        fallbacks = explain_fallbacks(tmp, qtype)  # fallbacks are explained here, not per tensor
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    for line in fallbacks:
        log.info("quant_fallback", detail=line)
    return fallbacks


def explain_fallbacks(path: Path, qtype: str) -> list[str]:
    """Tensors whose row length does not fit the requested type's block, and what they got."""
    import gguf

    wanted = qtype.split("_")[0] + "_" + qtype.split("_")[1] if "_" in qtype else qtype
    wanted_type = getattr(gguf.GGMLQuantizationType, wanted, None)
    if wanted_type is None:
        return []
    block = gguf.GGML_QUANT_SIZES[wanted_type][0]
    lines = []
    for tensor in gguf.GGUFReader(path).tensors:
        if len(tensor.shape) < 2 or tensor.tensor_type in (gguf.GGMLQuantizationType.F32,):
            continue
        row = int(tensor.shape[0])
        if row % block:
            lines.append(
                f"{tensor.name}: row length {row} is not a multiple of {wanted}'s block of "
                f"{block}; stored as {tensor.tensor_type.name}"
            )
    return lines


# --- the prompt contract ----------------------------------------------------------------------


def trained_prompt_style(train_data: Path) -> PromptStyle:
    """The persona prompt form the training data's system messages use: each persona's tag or
    its full prompt (both: the more frequent one, ties to the tag)."""
    from payphone.personas.loader import load_personas

    if not train_data.is_file():
        raise ExportError(f"no training data at {train_data}: run `python -m training data` first")
    book = load_personas()
    tags = {p.prompt_tag for p in book}
    prompts = {p.prompt for p in book}
    counts = {"tag": 0, "full": 0}
    with train_data.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            messages = json.loads(line).get("messages") or []
            system = messages[0].get("content") if messages[0].get("role") == "system" else None
            if system in tags:
                counts["tag"] += 1
            elif system in prompts:
                counts["full"] += 1
    if not any(counts.values()):
        raise ExportError(
            f"{train_data}: no system message is a persona's tag or full prompt, so the prompt "
            "style the model learnt is unknown"
        )
    return "full" if counts["full"] > counts["tag"] else "tag"


def tag_gguf(path: Path, style: PromptStyle) -> Path:
    """Write `payphone.prompt_style` into a GGUF (gguf's own metadata copier; atomic)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    tmp = path.with_name(f".{path.name}.tagged.tmp")
    try:
        reader = gguf.GGUFReader(path, "r")
        arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
        writer = gguf.GGUFWriter(
            tmp, arch=str(arch.contents()) if arch else "", endianess=reader.endianess
        )
        alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = int(alignment.contents())
        new = {PROMPT_STYLE_KEY: MetadataDetails(gguf.GGUFValueType.STRING, style)}
        copy_with_new_metadata(reader, writer, new, [])
        del reader  # its memory map, before the file is replaced
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot write {PROMPT_STYLE_KEY} into {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("gguf_prompt_style", gguf=str(path), style=style)
    return path


# --- merge -------------------------------------------------------------------------------------


def merge(cfg: TrainingConfig, paths: Paths, target: Path) -> Path:
    """Base + adapter merged into a plain fp32 HF folder (the base tokenizer and template)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (paths.adapter / "adapter_config.json").is_file():
        raise ExportError(f"no adapter at {paths.adapter}: run `python -m training train` first")
    folder = hf_folder(resolve(cfg.base), paths.base_cache)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(paths.adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(paths.adapter))
    save_folder(model, tokenizer, target)
    return target


def gguf_names(cfg: TrainingConfig, paths: Paths, stem: str | None = None) -> tuple[Path, Path]:
    """(float GGUF, quantized GGUF) paths under OUT/model."""
    stem = stem or cfg.name
    return (
        paths.model_dir / f"{stem}.{cfg.export.outtype.upper()}.gguf",
        paths.model_dir / f"{stem}.{cfg.export.quant}.gguf",
    )


def export_folder(
    cfg: TrainingConfig,
    paths: Paths,
    folder: Path,
    stem: str | None = None,
    prompt_style: PromptStyle | None = None,
) -> ExportResult:
    """An HF folder -> float GGUF -> quantized GGUF, each replaced atomically.

    `prompt_style`: written into the float GGUF before quantizing (llama.cpp's quantizer copies
    every metadata key, so both files carry it); None for a base model, which has no contract.
    """
    float_path, quant_path = gguf_names(cfg, paths, stem)
    llama_dir = llama_cpp_dir()
    quant_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.out) as tmp:
        work_float = Path(tmp) / float_path.name
        convert(folder, work_float, cfg.export.outtype, stem or cfg.name, llama_dir)
        if prompt_style is not None:
            tag_gguf(work_float, prompt_style)
        fallbacks = quantize(work_float, quant_path, cfg.export.quant)
        if cfg.export.keep_float:
            os.replace(work_float, float_path)
    kept = float_path if cfg.export.keep_float else None
    return ExportResult(kept, quant_path, fallbacks, prompt_style)


def run(cfg: TrainingConfig, out: Path) -> ExportResult:
    """The `export` stage: merge, convert, tag with the trained prompt style, quantize."""
    paths = Paths(out)
    style = trained_prompt_style(paths.train_data)
    merged = merge(cfg, paths, out / "merged")
    return export_folder(cfg, paths, merged, prompt_style=style)


def base_gguf(cfg: TrainingConfig, out: Path) -> Path:
    """The untuned base as a GGUF for `eval`: the configured file, or exported once."""
    source = resolve(cfg.base)
    if source.gguf is not None:
        return source.gguf
    paths = Paths(out)
    _, quant_path = gguf_names(cfg, paths, "base")
    if not quant_path.is_file():
        folder = Path(hf_folder(source, paths.base_cache)) if source.kind == "dir" else None
        if folder is None:
            folder = _snapshot(source.value)
        export_folder(cfg, paths, folder, "base")
    return quant_path


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id))


def describe(result: ExportResult) -> dict[str, Any]:
    """For logs and the pipeline summary."""
    return {
        "float_gguf": str(result.float_gguf) if result.float_gguf else None,
        "gguf": str(result.gguf),
        "fallbacks": len(result.fallbacks),
        "prompt_style": result.prompt_style,
    }
