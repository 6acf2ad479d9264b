"""LoRA fine-tune with peft + TRL's SFT trainer, loss on the assistant's words only.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the chat template, and SmolLM2's
ChatML template has none. We train with an equivalent template that renders byte-identical text
plus the markers (checked on every conversation before training starts) and save the original
template with the adapter, so the exported model prompts exactly like the base.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from payphone.log import get_logger
from training.base_model import hf_folder, load_model, load_tokenizer, resolve
from training.config import TrainingConfig

log = get_logger(__name__)

# SmolLM2's per-message piece, and the same text with the assistant's part marked for the loss.
_SMOL_PIECE = (  # the quoted newlines are real newline characters in the GGUF's template
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
)
_CHATML_MARKED_PIECE = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}" + _SMOL_PIECE + "{% endif %}"
)
# A plain ChatML template with markers, for ChatML bases whose own template (tools, defaults)
# cannot be patched in place; used only if it renders the training data byte-identically.
_CHATML_GENERIC = (
    "{% for message in messages %}" + _CHATML_MARKED_PIECE + "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TrainingError(RuntimeError):
    """Training cannot start or finish; the message says what to fix."""


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes under `--out`."""

    out: Path

    @property
    def train_data(self) -> Path:
        return self.out / "data" / "train.jsonl"

    @property
    def eval_data(self) -> Path:
        return self.out / "data" / "eval.jsonl"

    @property
    def base_cache(self) -> Path:
        return self.out / "base"

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def sft_adapter(self) -> Path:
        """What SFT learnt; the DPO stage starts from here, so it can be rerun."""
        return self.out / "adapter_sft"

    @property
    def adapter(self) -> Path:
        """The adapter `export` merges: SFT's, or SFT + DPO once the preference stage ran."""
        return self.out / "adapter"

    @property
    def train_summary(self) -> Path:
        return self.out / "train_summary.json"

    @property
    def model_dir(self) -> Path:
        return self.out / "model"


@dataclass(frozen=True)
class TrainResult:
    """What a training run reports (also written as train_summary.json)."""

    steps: int
    train_loss: float
    base_eval_loss: float | None
    eval_loss: float | None
    tokens: int
    train_seconds: float
    tokens_per_second: float
    device: str
    base: str
    best_step: int | None = None


def training_template(original: str) -> str:
    """An equivalent of `original` with `{% generation %}` around each assistant reply."""
    if "{% generation %}" in original:
        return original
    if _SMOL_PIECE in original:
        return original.replace(_SMOL_PIECE, _CHATML_MARKED_PIECE)
    if "<|im_start|>" in original:
        return _CHATML_GENERIC
    raise TrainingError(
        "the base model's chat template is not ChatML; assistant-only loss needs a template with "
        "{% generation %} markers: add one for this base in training/train.py"
    )


def check_template(tokenizer: Any, original: str, marked: str, convs: Iterable[list[Any]]) -> int:
    """Assert the marked template renders every conversation exactly like the original."""
    checked = 0
    for messages in convs:
        for prompt in (False, True):
            kwargs = {"tokenize": False, "add_generation_prompt": prompt}
            want = tokenizer.apply_chat_template(messages, chat_template=original, **kwargs)
            got = tokenizer.apply_chat_template(messages, chat_template=marked, **kwargs)
            if want != got:
                raise TrainingError(
                    "the training chat template does not render like the base template "
                    f"(first difference in conversation {checked + 1}): fix training_template()"
                )
        checked += 1
    return checked


def read_messages(path: Path) -> list[list[dict[str, str]]]:
    """The `messages` of each JSONL line written by the `data` stage."""
    if not path.is_file():
        raise TrainingError(f"{path} not found: run `python -m training data --out DIR` first")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line)["messages"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise TrainingError(f"{path}:{number}: not a chat record: {exc}") from exc
    if not rows:
        raise TrainingError(f"{path}: no conversations")
    return rows


def cpu_threads(setting: int) -> int:
    """Threads for torch/llama.cpp; 0 = the cores other work leaves idle (at least one).

    Oversubscribed cores are ruinous here: on a 2-core machine with one other busy process, a
    LoRA step of a 135M model took 40 s on 2 threads and 7 s on 1 (spin-waiting OpenMP workers).
    """
    if setting:
        return setting
    cores = os.cpu_count() or 1
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def pick_device(setting: str) -> str:
    """`auto` means CUDA when torch sees a GPU."""
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device = 'cuda' but torch sees no CUDA device")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


Precision = Literal["fp32", "bf16", "qlora"]

GIB = 1024**3
# What a LoRA run needs on the GPU beyond the frozen weights: CUDA context, activations of a
# batch of 8 x 1024 tokens, adapter and optimizer state. A rule of thumb (not measured on a GPU
# here), so a run that is close to the line can still set load_in_4bit by hand.
GPU_RESERVE_BYTES = 3 * GIB
WEIGHT_BYTES = {"bf16": 2.0 * 1.2, "qlora": 0.55 * 1.2}  # per parameter, with 20 % slack


def gpu_need_bytes(precision: Precision, params: int) -> int:
    """Estimated GPU memory for LoRA training of a `params`-parameter model."""
    return int(params * WEIGHT_BYTES[precision]) + GPU_RESERVE_BYTES


def choose_precision(
    device: str, setting: bool | None, free_bytes: int, params: int, have_bnb: bool
) -> Precision:
    """fp32 on a CPU; on CUDA bf16 LoRA when the free memory holds it, QLoRA only when not.

    `setting` is `train.load_in_4bit`: true forces QLoRA, false forces bf16, None decides by
    memory. A pure function of its inputs, so the choice is tested without a GPU.
    """
    if device != "cuda":
        if setting:
            raise TrainingError("train.load_in_4bit = true needs CUDA (QLoRA runs on GPUs only)")
        return "fp32"
    if setting and not have_bnb:
        raise TrainingError("train.load_in_4bit = true needs `pip install bitsandbytes`")
    if setting is not None:
        return "qlora" if setting else "bf16"
    if free_bytes >= gpu_need_bytes("bf16", params):
        return "bf16"
    if have_bnb and free_bytes >= gpu_need_bytes("qlora", params):
        return "qlora"
    hint = "" if have_bnb else "; QLoRA would need `pip install bitsandbytes`"
    raise TrainingError(
        f"the base model ({params / 1e9:.2f}B parameters) needs about "
        f"{gpu_need_bytes('bf16', params) / GIB:.1f} GiB of GPU memory for bf16 LoRA and "
        f"{gpu_need_bytes('qlora', params) / GIB:.1f} GiB for QLoRA; the GPU has "
        f"{free_bytes / GIB:.1f} GiB free{hint}"
    )


def count_parameters(folder: str) -> int:
    """The base model's parameter count from its config alone (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: instant and no memory, even for a 7B model
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def pick_precision(device: str, setting: bool | None, folder: str) -> Precision:
    """`choose_precision` with this machine's GPU memory and the base model's size."""
    import importlib.util

    if device != "cuda":
        return choose_precision(device, setting, 0, 0, False)
    import torch

    free, _total = torch.cuda.mem_get_info()
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    params = count_parameters(folder)
    precision = choose_precision(device, setting, int(free), params, have_bnb)
    log.info("gpu_precision", precision=precision, free_gib=round(free / GIB, 1), params=params)
    return precision


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` folder, for `--resume`."""
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return found[-1] if found else None


def runtime_args(device: str, qlora: bool) -> dict[str, Any]:
    """How a trainer runs here, the same for SFT and DPO: bf16 on CUDA, fp32 on a CPU,
    gradient checkpointing for QLoRA, no reporting services, no worker processes."""
    return {
        "gradient_checkpointing": qlora,
        "bf16": device == "cuda",
        "fp16": False,
        "use_cpu": device == "cpu",
        "optim": "adamw_torch",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "dataset_num_proc": None,
        "disable_tqdm": False,
    }


def sft_args(cfg: TrainingConfig, paths: Paths, device: str, qlora: bool) -> Any:
    """TRL's SFTConfig with CPU-sane values (its defaults target big GPUs)."""
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(
        output_dir=str(paths.checkpoints),
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        eval_on_start=True,  # LoRA starts as a no-op: this is the base model's eval loss
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # the full run keeps the checkpoint with the lowest held-out loss, and exports that one
        load_best_model_at_end=t.best_checkpoint,
        metric_for_best_model="eval_loss" if t.best_checkpoint else None,
        greater_is_better=False if t.best_checkpoint else None,
        logging_steps=t.logging_steps,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        seed=t.seed,
        data_seed=t.seed,
        max_length=t.max_seq_len,
        assistant_only_loss=True,
        packing=False,
        **runtime_args(device, qlora),
    )


def run(cfg: TrainingConfig, out: Path, resume: bool = False) -> TrainResult:
    """Train the LoRA adapter; write it to OUT/adapter and a summary to train_summary.json."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    paths = Paths(out)
    train_rows = read_messages(paths.train_data)
    eval_rows = read_messages(paths.eval_data)
    loss_rows = spread(eval_rows, cfg.train.eval_conversations)
    device = pick_device(cfg.train.device)
    torch.set_num_threads(cpu_threads(cfg.train.threads))
    folder = hf_folder(resolve(cfg.base), paths.base_cache)
    qlora = pick_precision(device, cfg.train.load_in_4bit, folder) == "qlora"
    tokenizer = load_tokenizer(folder)
    original = tokenizer.chat_template
    if not original:
        raise TrainingError(f"base {cfg.base!r} has no chat template")
    marked = training_template(original)
    checked = check_template(tokenizer, original, marked, [*train_rows, *eval_rows])
    log.info("template_checked", conversations=checked)
    tokenizer.chat_template = marked

    model = load_model(folder, device, load_in_4bit=qlora)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    resume_from = latest_checkpoint(paths.checkpoints) if resume else None
    if resume and resume_from is None:
        log.warning("resume_nothing", checkpoints=str(paths.checkpoints))
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, paths, device, qlora),
        train_dataset=Dataset.from_list([{"messages": m} for m in train_rows]),
        eval_dataset=Dataset.from_list([{"messages": m} for m in loss_rows]),
        processing_class=tokenizer,
        peft_config=lora,
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    best_step = _best_step(trainer.state) if cfg.train.best_checkpoint else None
    final_eval: dict[str, Any]
    if best_step is not None:  # the model in memory is the best checkpoint, reloaded
        final_eval = {"eval_loss": trainer.state.best_metric}
    else:
        final_eval = _last_eval(history, int(output.global_step)) or trainer.evaluate()

    tokenizer.chat_template = original  # the exported model prompts exactly like the base
    _save_adapter(trainer, tokenizer, paths.sft_adapter)
    # `adapter` (what export merges) changes only now, whole: an interrupted run leaves it be
    copy_dir(paths.sft_adapter, paths.adapter)
    tokens = int(max((h.get("num_tokens", 0) for h in history), default=0))
    result = TrainResult(
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        base_eval_loss=_first_eval_loss(history),
        eval_loss=_float_or_none(final_eval.get("eval_loss")),
        tokens=tokens,
        train_seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        device=device + (" qlora-4bit" if qlora else ""),
        base=cfg.base,
        best_step=best_step,
    )
    _write_json(paths.train_summary, asdict(result))
    log.info("train_done", **asdict(result))
    return result


def _save_adapter(trainer: Any, tokenizer: Any, target: Path) -> None:
    from training.base_model import save_folder

    save_folder(trainer.model, tokenizer, target)


def copy_dir(source: Path, target: Path) -> None:
    """Copy folder `source` to `target`, replacing it all or nothing."""
    import shutil
    import tempfile

    from training.base_model import replace_dir

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _best_step(state: Any) -> int | None:
    checkpoint = getattr(state, "best_model_checkpoint", None)
    return int(str(checkpoint).rsplit("-", 1)[1]) if checkpoint else None


def spread(rows: list[Any], count: int) -> list[Any]:
    """`count` rows evenly spread over `rows` (the eval file is grouped by persona); 0 = all."""
    if count <= 0 or count >= len(rows):
        return rows
    return [rows[(i * len(rows)) // count] for i in range(count)]


def _last_eval(history: Sequence[dict[str, Any]], step: int) -> dict[str, Any] | None:
    evals = [h for h in history if "eval_loss" in h and h.get("step") == step]
    return evals[-1] if evals and step > 0 else None


def _first_eval_loss(history: Sequence[dict[str, Any]]) -> float | None:
    for entry in history:
        if "eval_loss" in entry:
            return float(entry["eval_loss"])
    return None


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_summary(out: Path) -> dict[str, Any] | None:
    """The last training run's summary, if any."""
    path = Paths(out).train_summary
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
