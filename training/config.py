"""The training config: one pydantic model, read from a TOML file under `training/configs/`.

Every knob of the pipeline lives here so a run is reproducible from one file; a bad value stops
the run with the file and the setting named, before any model is loaded.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from payphone.personas.loader import load_personas

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quick.toml"

Device = Literal["auto", "cpu", "cuda"]
OutType = Literal["f32", "f16", "bf16"]
RejectedSource = Literal["sft", "base"]


ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(_Strict):
    """LoRA adapter shape: small r is plenty to teach a voice and a reply length."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))


class TrainStage(_Strict):
    """SFT knobs; defaults suit a 135M model in fp32 on a 2-core CPU."""

    max_steps: int = Field(60, description="> 0 wins over epochs")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_steps: int = Field(5, ge=0)
    eval_steps: int = Field(20, ge=1)
    eval_conversations: int = Field(0, ge=0, description="conversations for eval loss; 0 = all")
    save_steps: int = Field(20, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    seed: int = 0
    max_seq_len: int = Field(384, ge=32)
    device: Device = "auto"
    load_in_4bit: bool | None = Field(
        None, description="None: bf16 LoRA when the GPU has the memory, else QLoRA (bitsandbytes)"
    )
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = the idle cores")
    best_checkpoint: bool = Field(
        False, description="keep and export the checkpoint with the lowest held-out eval loss"
    )
    group_by_length: bool = Field(
        False, description="batch conversations of similar length: less padding, faster steps"
    )

    @model_validator(mode="after")
    def _best_needs_saved_evals(self) -> TrainStage:
        # transformers can only reload a checkpoint it saved at an evaluation step
        if self.best_checkpoint and self.save_steps % self.eval_steps:
            raise ValueError(
                f"best_checkpoint = true needs save_steps ({self.save_steps}) to be a multiple of "
                f"eval_steps ({self.eval_steps})"
            )
        return self


class DpoStage(_Strict):
    """Preference tuning after SFT: the authored reply over the model's own worse reply.

    Rejected replies are sampled from the SFT model (and, for prompts where it did well, the
    base) at the phone's temperature; only a reply that is worse (too long, another persona's
    voice, or leaking the prompt) makes a pair, so every pair teaches what is wrong.
    """

    enabled: bool = False
    pairs: int = Field(32, ge=1, description="pairs to build (stop sampling once reached)")
    min_pairs: int = Field(4, ge=1, description="fewer worse replies than this: stop with an error")
    max_prompts: int = Field(128, ge=1, description="training turns to sample replies for")
    sources: list[RejectedSource] = Field(
        default_factory=lambda: list[RejectedSource](("sft", "base")),
        min_length=1,
        description="who writes rejected replies, tried in order for each prompt",
    )
    temperature: float = Field(0.7, gt=0, description="sampling temperature (the phone's)")
    max_new_tokens: int = Field(96, ge=8)
    generate_batch: int = Field(16, ge=1)
    max_words: int = Field(40, ge=1, description="a longer reply is worse (the data's limit)")
    max_steps: int = Field(8, description="> 0 wins over epochs")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(384, ge=32)
    logging_steps: int = Field(2, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _enough_pairs_possible(self) -> DpoStage:
        if self.min_pairs > self.pairs:
            raise ValueError(f"min_pairs ({self.min_pairs}) is more than pairs ({self.pairs})")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources lists a source twice: {self.sources}")
        return self


class DataStage(_Strict):
    """How `data` builds train/eval from the authored files."""

    seed: int = 0
    copies: int = Field(1, ge=0)
    eval_share: float = Field(0.1, gt=0, lt=1)


class ExportStage(_Strict):
    """GGUF output: a float file from llama.cpp's converter, then one quantized file."""

    outtype: OutType = "f16"
    quant: str = Field("Q8_0", description="Q8_0 for the 135M demo, Q4_K_M for 1-4B models")
    keep_float: bool = True


class ModelfileStage(_Strict):
    """Ollama Modelfile parameters."""

    num_ctx: int = Field(2048, ge=128)
    temperature: float = Field(0.7, ge=0)
    num_predict: int = Field(120, ge=1)
    system: str = Field(default_factory=lambda: load_personas().operator.prompt_tag)


class EvalStage(_Strict):
    """Base (full persona prompt) vs tuned on held-out cases, sampled as the phone samples.

    Temperature, token limit, context and history budget come from the phone's settings
    (`payphone.config`), not from here. The limits keep the first N cases of each kind per
    persona (0: every one); the full configuration evaluates everything, the quick one a subset.
    """

    samples: int = Field(3, ge=1, description="replies per case, seeds seed, seed+1, ...")
    seed: int = Field(0, ge=0)
    prompts_per_persona: int = Field(0, ge=0, description="held-out turns per persona; 0 = all")
    break_attempts_per_persona: int = Field(0, ge=0, description="break attempts; 0 = all")
    memory_probes_per_persona: int = Field(0, ge=0, description="memory probes; 0 = all")
    max_tokens: int | None = Field(None, ge=8, description="None: the phone's llm.num_predict")
    same_quant: bool = Field(True, description="re-quantize the base to the tuned model's type")
    threads: int = Field(0, ge=0, description="llama.cpp threads; 0 = the idle cores")

    def quick(self) -> EvalStage:
        """A small subset (two cases of each kind per persona) for CI and a first look."""
        return self.model_copy(
            update={
                "prompts_per_persona": 2,
                "break_attempts_per_persona": 2,
                "memory_probes_per_persona": 2,
            }
        )


class TrainingConfig(_Strict):
    """The whole pipeline's config (`training/configs/*.toml`)."""

    name: str = Field("payphone-persona", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: str = Field(
        "SmolLM2-135M-Instruct",
        description="demo GGUF name, a .gguf path, a local HF folder, or a Hugging Face id",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataStage = Field(default_factory=DataStage)
    train: TrainStage = Field(default_factory=TrainStage)
    dpo: DpoStage = Field(default_factory=DpoStage)
    export: ExportStage = Field(default_factory=ExportStage)
    modelfile: ModelfileStage = Field(default_factory=ModelfileStage)
    eval: EvalStage = Field(default_factory=EvalStage)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and each bad setting."""


def load_config(path: Path | None = None) -> TrainingConfig:
    """Read and validate a TOML config (default: `training/configs/quick.toml`)."""
    path = DEFAULT_CONFIG if path is None else path
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "missing" else "")
            for e in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from exc
