"""The training pipeline with the real SmolLM2 GGUF: round trip, a tiny run, resume, DPO, Modelfile.

The round trip proves the export route (transformers folder -> llama.cpp's converter -> GGUF):
the base GGUF (Q4_1) is loaded by transformers (dequantized), exported as F32 with no training,
then (1) the attention q/k tensors, where llama.cpp permutes rows, must equal the original's
dequantized values exactly, and (2) re-quantized to Q4_1 the exported file must give the same
greedy tokens in llama.cpp as the original file. (The F32 file itself may differ from the Q4_1
file after a few tokens: llama.cpp's Q4_1 matmuls quantize activations to 8 bits.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from payphone.llm.factory import read_gguf_style
from training import export, modelfile
from training.base_model import hf_folder, load_tokenizer, resolve
from training.config import TrainingConfig, load_config
from training.dataset import load_dir
from training.pipeline import stage_data, stage_dpo, stage_export, stage_modelfile, stage_train
from training.train import Paths, check_template, read_summary, training_template

pytestmark = [pytest.mark.models, pytest.mark.slow]

PROMPTS = [
    [{"role": "system", "content": "persona: Operator"}, {"role": "user", "content": "Hello?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "persona: Grandma Mae"},
        {"role": "user", "content": "tell me a story about your cat"},
    ],
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An out dir with the base converted once to an HF folder (~40 s on 2 cores)."""
    out = tmp_path_factory.mktemp("training")
    try:
        source = resolve("SmolLM2-135M-Instruct")
    except ValueError as exc:
        pytest.skip(str(exc))
    return out, hf_folder(source, Paths(out).base_cache)


@pytest.fixture(scope="module")
def llama_dir() -> Path:
    try:
        return export.llama_cpp_dir()
    except export.ExportError as exc:
        pytest.skip(f"llama.cpp's converter is not available: {exc}")


def greedy(gguf: Path, n_tokens: int = 24) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=2, seed=0, verbose=False)
    template = modelfile.read_gguf_template(gguf)
    runs = []
    for messages in PROMPTS:
        prompt = modelfile.render_jinja(template, messages, True)
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        out: list[int] = []
        for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(out) >= n_tokens:
                break
            out.append(token)
        runs.append(out)
    llm.close()
    return runs


def small_config(**train: object) -> TrainingConfig:
    base = load_config()
    settings = {
        "max_steps": 2, "batch_size": 1, "max_seq_len": 128, "eval_steps": 2,
        "eval_conversations": 2, "save_steps": 1, "warmup_steps": 0, "logging_steps": 1,
        "threads": 1,  # predictable on a shared 2-core runner
        **train,
    }  # fmt: skip
    return base.model_copy(update={"train": base.train.model_copy(update=settings)})


def test_training_template_renders_the_data_like_the_base(workspace: tuple[Path, str]) -> None:
    _, folder = workspace
    tokenizer = load_tokenizer(folder)
    original = tokenizer.chat_template
    convs = [list(c.messages) for c in load_dir()]
    convs.append(convs[0][1:])  # no system prompt: the base adds its default one
    assert check_template(tokenizer, original, training_template(original), convs) == len(convs)
    # the marks cover the assistant reply and its end token, nothing else
    marked = tokenizer.apply_chat_template(
        convs[0][:3],
        chat_template=training_template(original),
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = [i for i, m in zip(marked["input_ids"], marked["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(ids) == convs[0][2]["content"] + "<|im_end|>"


def test_gguf_round_trip(workspace: tuple[Path, str], llama_dir: Path) -> None:
    import gguf
    import numpy as np

    out, folder = workspace
    cfg = load_config()
    cfg = cfg.model_copy(
        update={"export": cfg.export.model_copy(update={"outtype": "f32", "quant": "Q4_1"})}
    )
    result = export.export_folder(cfg, Paths(out), Path(folder), "roundtrip")
    original = resolve(cfg.base).gguf
    assert original is not None and result.float_gguf is not None

    ours = {t.name: t for t in gguf.GGUFReader(result.float_gguf).tensors}
    for tensor in gguf.GGUFReader(original).tensors:
        if tensor.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.7.attn_k.weight"):
            want = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            got = np.asarray(ours[tensor.name].data).reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=tensor.name)

    assert modelfile.read_gguf_template(result.gguf) == modelfile.read_gguf_template(original)
    assert greedy(result.gguf) == greedy(original)


def tiny_dpo(cfg: TrainingConfig) -> TrainingConfig:
    settings = {
        "enabled": True, "pairs": 1, "min_pairs": 1, "max_prompts": 4, "generate_batch": 4,
        "max_new_tokens": 48, "max_steps": 1, "batch_size": 1, "max_seq_len": 128,
        "logging_steps": 1,
    }  # fmt: skip
    return cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update=settings)})


def test_tiny_run_exports_a_model_llama_cpp_answers_with(
    workspace: tuple[Path, str], llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_cpp import Llama

    out, _ = workspace
    cfg = small_config()
    stage_data(cfg, out)
    # held-out loss at each step; the best checkpoint is the one kept (the full config's way)
    first = stage_train(small_config(best_checkpoint=True, eval_steps=1), out)
    assert first.steps == 2
    assert first.base_eval_loss is not None and first.eval_loss is not None
    history = json.loads(
        (Paths(out).checkpoints / "checkpoint-2" / "trainer_state.json").read_text()
    )
    losses = {h["step"]: h["eval_loss"] for h in history["log_history"] if "eval_loss" in h}
    assert sorted(losses) == [0, 1, 2]
    best = min((1, 2), key=losses.__getitem__)
    assert first.best_step == best and first.eval_loss == pytest.approx(losses[best])
    assert first.tokens > 0 and first.tokens_per_second > 0
    assert read_summary(out) is not None

    resumed = stage_train(small_config(max_steps=3), out, resume=True)
    assert resumed.steps == 3  # continued from checkpoint-2, not from zero

    adapter_tok = load_tokenizer(str(Paths(out).adapter))
    assert "{% generation %}" not in adapter_tok.chat_template  # the base template is saved

    # DPO: interrupted, the adapter export merges is untouched; finished, it is replaced whole
    weights = Paths(out).adapter / "adapter_model.safetensors"
    sft_weights = weights.read_bytes()
    with monkeypatch.context() as patch:

        def interrupted(*_: object, **__: object) -> None:
            raise KeyboardInterrupt

        patch.setattr("trl.DPOTrainer.train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            stage_dpo(tiny_dpo(cfg), out)
    assert weights.read_bytes() == sft_weights
    tuned = stage_dpo(tiny_dpo(cfg), out)
    assert tuned.steps == 1 and tuned.pairs == 1 and sum(tuned.problems.values()) >= 1
    pair = json.loads((out / "dpo" / "pairs.jsonl").read_text())
    assert pair["problems"] and pair["rejected"][0]["content"] != pair["chosen"][0]["content"]
    assert weights.read_bytes() != sft_weights  # DPO moved the SFT adapter
    assert not (Paths(out).adapter / "ref").exists()  # the frozen reference is not exported

    result = stage_export(cfg, out)
    assert result.gguf.name == f"{cfg.name}.Q8_0.gguf"
    # the data's system messages are persona tags: the model says so, and the phone reads it
    assert result.prompt_style == "tag"
    assert read_gguf_style(result.gguf).style == "tag"
    llm = Llama(model_path=str(result.gguf), n_ctx=512, n_threads=2, seed=0, verbose=False)
    reply = llm.create_chat_completion(
        messages=PROMPTS[0],  # type: ignore[arg-type]
        temperature=0.0,
        max_tokens=24,
    )
    llm.close()
    assert str(reply["choices"][0]["message"]["content"]).strip()  # type: ignore[index]

    # K-quants need rows in blocks of 256; SmolLM2's 576-wide rows fall back, and we say why
    assert result.float_gguf is not None
    fallbacks = export.quantize(result.float_gguf, out / "k.gguf", "Q4_K_M")
    assert any("row length 576" in line and "Q4_K" in line for line in fallbacks)

    path = stage_modelfile(cfg, out)
    text = path.read_text()
    assert f"FROM ./{result.gguf.name}" in text
    assert "You are a helpful AI assistant named SmolLM" in text  # default system, as in Jinja
    assert "# prompt style: tag (GGUF metadata payphone.prompt_style" in text
