"""Preference tuning (TRL's DPO, LoRA) after SFT: the authored reply over the model's own worse one.

SFT teaches what a persona says; it does not say what is wrong with what the model says instead.
Here the pipeline samples the SFT model's (and, where that one did well, the base model's) own
replies to training prompts at the phone's temperature and keeps a reply as `rejected` only when
it is worse than the authored one: longer than the data's word limit, in another persona's voice
(the persona classifier trained on the authored replies), or leaking the prompt or the machinery.

DPO continues training the SFT adapter, with a frozen copy of it as the reference (TRL does this
for a PeftModel passed without a peft_config): one adapter comes out, so `export` merges it as
before, and the reference is exactly the SFT model. The result replaces OUT/adapter only when the
stage finishes; SFT's own adapter stays in OUT/adapter_sft so the stage can be rerun.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from payphone.log import get_logger
from training.base_model import BaseModelError, hf_folder, load_model, load_tokenizer, resolve
from training.config import DpoStage, RejectedSource, TrainingConfig
from training.dataset import PERSONAS, word_count
from training.persona_classifier import PersonaClassifier, Reply
from training.train import (
    Paths,
    TrainingError,
    _write_json,
    cpu_threads,
    pick_device,
    pick_precision,
    runtime_args,
)

log = get_logger(__name__)

# Narrow on purpose: words only a model that forgot the call would say (an in-character "my
# instructions" is fine). The persona's own prompt sentences are checked separately.
MACHINERY = re.compile(
    r"language model|\bAI assistant\b|system prompt|persona:|SmolLM|Hugging ?Face|\bas an AI\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MIN_LEAK_WORDS = 6  # a prompt sentence this long, said back, is a leak and not a coincidence


class DpoError(TrainingError):
    """The preference stage cannot run; the message names the missing piece."""


Message = dict[str, str]


@dataclass(frozen=True)
class Prompt:
    """One training turn: the call so far (system tag, history, caller line), the authored reply."""

    persona: str
    messages: tuple[Message, ...]
    chosen: str


@dataclass(frozen=True)
class Pair:
    """A preference pair and why its rejected reply is worse."""

    prompt: Prompt
    rejected: str
    source: RejectedSource
    problems: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """TRL's conversational preference format (plus what we know about the pair)."""
        return {
            "prompt": [dict(m) for m in self.prompt.messages],
            "chosen": [{"role": "assistant", "content": self.prompt.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "persona": self.prompt.persona,
            "source": self.source,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class DpoResult:
    """What the preference stage reports (also written as dpo_summary.json)."""

    pairs: int
    sampled: int
    problems: dict[str, int]
    sources: dict[str, int]
    steps: int
    train_loss: float
    reward_accuracy: float | None
    reward_margin: float | None
    generate_seconds: float
    train_seconds: float
    device: str


def read_prompts(path: Path) -> list[tuple[str, list[Message]]]:
    """(persona, messages) of each JSONL record the `data` stage wrote."""
    if not path.is_file():
        raise DpoError(f"{path} not found: run `python -m training data --out DIR` first")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    rows.append((str(record["persona"]), list(record["messages"])))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DpoError(f"{path}:{number}: not a chat record: {exc}") from exc
    return rows


def training_prompts(
    rows: Sequence[tuple[str, Sequence[Message]]], count: int, seed: int
) -> list[Prompt]:
    """`count` assistant turns, shuffled with `seed` and taken from each persona in turn."""
    by_persona: dict[str, list[Prompt]] = defaultdict(list)
    for persona, messages in rows:
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and i > 0:
                by_persona[persona].append(Prompt(persona, tuple(messages[:i]), message["content"]))
    rng = random.Random(seed)
    for persona in sorted(by_persona):
        rng.shuffle(by_persona[persona])
    queues = [by_persona[p] for p in sorted(by_persona)]
    picked: list[Prompt] = []
    for i in range(max((len(q) for q in queues), default=0)):
        picked += [q[i] for q in queues if i < len(q)]
    return picked[:count]


@dataclass
class Judge:
    """Says what is wrong with a reply (nothing: it is not worse than the authored one)."""

    classifier: PersonaClassifier
    max_words: int
    prompt_sentences: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, Sequence[Message]]], max_words: int) -> Judge:
        """Classifier trained on the rows' authored replies; leak sentences from the personas."""
        replies = [
            Reply(m["content"], persona, str(n))
            for n, (persona, messages) in enumerate(rows)
            for m in messages
            if m["role"] == "assistant"
        ]
        if len({r.persona for r in replies}) < 2:
            raise DpoError("the persona classifier needs authored replies of two personas or more")
        sentences = {
            slug: [
                s.strip().lower()
                for s in _SENTENCE.split(p.prompt)
                if word_count(s) >= MIN_LEAK_WORDS
            ]
            for slug, p in PERSONAS.items()
        }
        return cls(PersonaClassifier.fit(replies), max_words, sentences)

    def problems(self, persona: str, replies: Sequence[str]) -> list[tuple[str, ...]]:
        """For each reply of `persona`, its problems (empty: as good as the authored one)."""
        voices = self.classifier.predict([r or "." for r in replies])
        found = []
        for reply, voice in zip(replies, voices, strict=True):
            mine: list[str] = []
            words = word_count(reply)
            if words == 0:
                mine.append("empty")
            if words > self.max_words:
                mine.append("too_long")
            if words and voice != persona:
                mine.append("other_persona")
            if self.leaks(persona, reply):
                mine.append("leak")
            found.append(tuple(mine))
        return found

    def leaks(self, persona: str, reply: str) -> bool:
        """The machinery named, or a sentence of the persona's own prompt said back."""
        if MACHINERY.search(reply):
            return True
        low = " ".join(reply.lower().split())
        return any(s in low for s in self.prompt_sentences.get(persona, ()))


Sampler = Callable[[RejectedSource, Sequence[Prompt]], list[str]]


def build_pairs(
    prompts: Sequence[Prompt],
    sample: Sampler,
    judge: Judge,
    sources: Sequence[RejectedSource],
    wanted: int,
    batch: int = 16,
) -> tuple[list[Pair], int]:
    """Pairs whose rejected reply is worse; each prompt tries the sources in order.

    Returns the pairs (at most `wanted`) and how many replies were sampled.
    """
    pairs: list[Pair] = []
    sampled = 0
    for start in range(0, len(prompts), batch):
        todo = list(prompts[start : start + batch])
        for source in sources:
            if not todo or len(pairs) >= wanted:
                break
            replies = sample(source, todo)
            sampled += len(replies)
            left = []
            for prompt, reply in zip(todo, replies, strict=True):
                problems = judge.problems(prompt.persona, [reply])[0]
                if problems and len(pairs) < wanted:
                    pairs.append(Pair(prompt, reply.strip(), source, problems))
                else:
                    left.append(prompt)
            todo = left
        if len(pairs) >= wanted:
            break
    return pairs, sampled


class ModelSampler:
    """Batched sampling from the SFT PeftModel, or from the base with the adapter switched off."""

    def __init__(self, model: Any, tokenizer: Any, cfg: DpoStage) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg

    def __call__(self, source: RejectedSource, prompts: Sequence[Prompt]) -> list[str]:
        import torch

        tok = self.tokenizer
        texts = [
            tok.apply_chat_template(list(p.messages), tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        adapter_off = self.model.disable_adapter() if source == "base" else nullcontext()
        self.model.eval()
        with torch.no_grad(), adapter_off:
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=self.cfg.temperature,
                max_new_tokens=self.cfg.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return [str(t).strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def dpo_args(cfg: TrainingConfig, out: Path, device: str, qlora: bool) -> Any:
    """TRL's DPOConfig with CPU-sane values; bf16 on CUDA, as in SFT."""
    from trl import DPOConfig

    d = cfg.dpo
    return DPOConfig(
        output_dir=str(out / "dpo_checkpoints"),
        max_steps=d.max_steps if d.max_steps > 0 else -1,
        num_train_epochs=d.epochs,
        learning_rate=d.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        per_device_train_batch_size=d.batch_size,
        gradient_accumulation_steps=d.grad_accum,
        beta=d.beta,
        max_length=d.max_seq_len,
        save_strategy="no",  # the adapter is saved whole at the end, or not at all
        logging_steps=d.logging_steps,
        seed=d.seed,
        data_seed=d.seed,
        **runtime_args(device, qlora),
    )


@contextmanager
def _timed() -> Iterator[list[float]]:
    box = [time.perf_counter()]
    yield box
    box[0] = time.perf_counter() - box[0]


def run(cfg: TrainingConfig, out: Path) -> DpoResult:
    """Build pairs, train the SFT adapter with DPO, write OUT/adapter and dpo_summary.json."""
    paths = Paths(out)
    if not (paths.sft_adapter / "adapter_config.json").is_file():
        raise DpoError(
            f"no SFT adapter at {paths.sft_adapter}: the preference stage starts from SFT; run "
            "`python -m training train` first"
        )
    try:
        folder = hf_folder(resolve(cfg.base), paths.base_cache)
    except (BaseModelError, OSError) as exc:
        raise DpoError(
            f"dpo: cannot generate rejected replies without the base model: {exc}"
        ) from exc
    rows = read_prompts(paths.train_data)
    prompts = training_prompts(rows, cfg.dpo.max_prompts, cfg.dpo.seed)
    judge = Judge.from_rows(rows, cfg.dpo.max_words)

    import torch
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOTrainer

    torch.manual_seed(cfg.dpo.seed)
    torch.set_num_threads(cpu_threads(cfg.train.threads))
    device = pick_device(cfg.train.device)
    qlora = pick_precision(device, cfg.train.load_in_4bit, folder) == "qlora"
    tokenizer = load_tokenizer(str(paths.sft_adapter))  # the base's own template
    model = PeftModel.from_pretrained(
        load_model(folder, device, load_in_4bit=qlora), str(paths.sft_adapter), is_trainable=True
    )
    with _timed() as generate_time:
        pairs, sampled = build_pairs(
            prompts,
            ModelSampler(model, tokenizer, cfg.dpo),
            judge,
            cfg.dpo.sources,
            cfg.dpo.pairs,
            cfg.dpo.generate_batch,
        )
    log.info("dpo_pairs", pairs=len(pairs), sampled=sampled, seconds=round(generate_time[0], 1))
    _write_jsonl(out / "dpo" / "pairs.jsonl", [p.record() for p in pairs])
    if len(pairs) < cfg.dpo.min_pairs:
        raise DpoError(
            f"dpo: only {len(pairs)} of {sampled} sampled replies were worse than the authored "
            f"ones (dpo.min_pairs = {cfg.dpo.min_pairs}); raise dpo.max_prompts, add 'base' to "
            "dpo.sources, or switch the stage off (dpo.enabled = false)"
        )
    dataset = Dataset.from_list(
        [{k: v for k, v in p.record().items() if k in ("prompt", "chosen", "rejected")}
         for p in pairs]
    )  # fmt: skip
    model.train()
    trainer = DPOTrainer(
        model=model,
        args=dpo_args(cfg, out, device, qlora),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    with _timed() as train_time:
        output = trainer.train()
    trained: Any = trainer.model
    if "ref" in getattr(trained, "peft_config", {}):
        trained.delete_adapter("ref")  # the frozen reference copy is not part of the model
    from training.base_model import save_folder

    save_folder(trained, tokenizer, paths.adapter)  # all or nothing: export sees old or new
    history = trainer.state.log_history
    result = DpoResult(
        pairs=len(pairs),
        sampled=sampled,
        problems=dict(Counter(x for p in pairs for x in p.problems)),
        sources=dict(Counter(p.source for p in pairs)),
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        reward_accuracy=_last(history, "rewards/accuracies"),
        reward_margin=_last(history, "rewards/margins"),
        generate_seconds=generate_time[0],
        train_seconds=train_time[0],
        device=device + (" qlora-4bit" if qlora else ""),
    )
    _write_json(out / "dpo_summary.json", asdict(result))
    log.info("dpo_done", **asdict(result))
    return result


def _last(history: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [float(h[key]) for h in history if key in h]
    return values[-1] if values else None


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
