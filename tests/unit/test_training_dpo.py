"""Training configurations, GPU precision choice, DPO pairs and failure modes (no model loaded)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from training import pipeline
from training.cli import app
from training.config import CONFIG_DIR, DEFAULT_CONFIG, ConfigError, TrainingConfig, load_config
from training.dataset import PERSONAS, load_dir
from training.dpo import DpoError, Judge, Prompt, build_pairs, training_prompts
from training.train import GIB, TrainingError, TrainResult, choose_precision, gpu_need_bytes

# --- configurations ---------------------------------------------------------------------------


def test_quick_is_the_default_and_bounded_by_steps() -> None:
    quick = load_config()
    assert DEFAULT_CONFIG.name == "quick.toml"
    assert quick.train.max_steps > 0  # the data may grow fourfold: time must not
    assert quick.dpo.enabled and quick.dpo.max_steps > 0 and quick.dpo.pairs <= 32


def test_full_cpu_config_covers_two_epochs_and_keeps_the_best() -> None:
    full = load_config(CONFIG_DIR / "cpu.toml")
    t = full.train
    assert t.device == "cpu" and t.max_steps == 0 and t.epochs >= 2
    assert t.best_checkpoint and t.save_steps % t.eval_steps == 0
    assert full.dpo.enabled and full.dpo.pairs > load_config().dpo.pairs


def test_gpu_config_decides_precision_by_memory() -> None:
    gpu = load_config(CONFIG_DIR / "production.toml")
    assert gpu.train.device == "cuda"
    assert gpu.train.load_in_4bit is None  # bf16 when it fits, QLoRA only when not
    assert gpu.train.best_checkpoint and gpu.dpo.enabled


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_best_checkpoint_needs_a_save_at_each_kept_eval(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[train]\nbest_checkpoint = true\neval_steps = 20\nsave_steps = 30\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: train: .*save_steps \(30\).*eval_steps"):
        load_config(bad)


def test_bad_dpo_settings_are_named(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[dpo]\npairs = 4\nmin_pairs = 8\n[lora]\nr = 8\n")
    with pytest.raises(ConfigError, match=r"dpo: .*min_pairs \(8\) is more than pairs \(4\)"):
        load_config(bad)
    bad = _write(tmp_path, '[dpo]\nsources = ["sft", "gpt"]\nbeta = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert "dpo.sources.1: Input should be 'sft' or 'base'" in message
    assert "dpo.beta: Input should be greater than 0" in message


def test_cli_exits_2_on_a_bad_dpo_setting(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[dpo]\nmax_words = 0\n")
    result = CliRunner().invoke(app, ["dpo", "--config", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "dpo.max_words" in result.output and "Traceback" not in result.output


# --- GPU precision ------------------------------------------------------------------------------

B15 = 1_540_000_000  # Qwen2.5-1.5B
B7 = 7_600_000_000


@pytest.mark.parametrize(
    ("device", "free_gib", "params", "bnb", "want"),
    [
        ("cpu", 0, B15, True, "fp32"),
        ("cuda", 24, B15, True, "bf16"),  # fits: no quantization, whatever is installed
        ("cuda", 24, B15, False, "bf16"),
        ("cuda", 16, B7, True, "qlora"),  # 7B bf16 needs ~20 GiB: 4-bit only when it must
        ("cuda", 80, B7, True, "bf16"),
        ("cuda", 7, B15, True, "bf16"),  # 1.5B in bf16 needs ~6.4 GiB
        ("cuda", 6, B15, True, "qlora"),
    ],
)
def test_precision_by_device_memory_and_size(
    device: str, free_gib: float, params: int, bnb: bool, want: str
) -> None:
    assert choose_precision(device, None, int(free_gib * GIB), params, bnb) == want


def test_precision_thresholds_are_the_estimates() -> None:
    need = gpu_need_bytes("bf16", B15)
    assert choose_precision("cuda", None, need, B15, True) == "bf16"
    assert choose_precision("cuda", None, need - 1, B15, True) == "qlora"
    assert gpu_need_bytes("qlora", B15) < need


def test_precision_settings_and_what_is_missing() -> None:
    assert choose_precision("cuda", False, 1, B7, True) == "bf16"  # forced by the setting
    assert choose_precision("cuda", True, 100 * GIB, B15, True) == "qlora"
    with pytest.raises(TrainingError, match="load_in_4bit = true needs `pip install bitsandbytes`"):
        choose_precision("cuda", True, 100 * GIB, B15, False)
    with pytest.raises(TrainingError, match="load_in_4bit = true needs CUDA"):
        choose_precision("cpu", True, 0, B15, True)
    with pytest.raises(TrainingError, match=r"7\.60B parameters.*GiB free; QLoRA would need"):
        choose_precision("cuda", None, 12 * GIB, B7, False)
    with pytest.raises(TrainingError, match=r"2\.0 GiB free$"):
        choose_precision("cuda", None, 2 * GIB, B7, True)


# --- DPO pairs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, list[dict[str, str]]]]:
    return [(c.persona, [dict(m) for m in c.messages]) for c in load_dir()]


@pytest.fixture(scope="module")
def judge(rows: list[tuple[str, list[dict[str, str]]]]) -> Judge:
    return Judge.from_rows(rows, max_words=40)


def test_training_prompts_end_with_the_caller_and_take_turns(
    rows: list[tuple[str, list[dict[str, str]]]],
) -> None:
    prompts = training_prompts(rows, 8, seed=0)
    assert len(prompts) == 8
    assert [p.persona for p in prompts[:4]] == sorted(PERSONAS)  # each persona in turn
    for p in prompts:
        assert p.messages[0]["role"] == "system" and p.messages[-1]["role"] == "user"
        whole = next(m for persona, m in rows if persona == p.persona and m[: len(p.messages)]
                     == list(p.messages))  # fmt: skip
        assert whole[len(p.messages)]["content"] == p.chosen
    assert training_prompts(rows, 8, seed=0) == prompts
    assert training_prompts(rows, 8, seed=1) != prompts


def test_judge_names_what_is_worse(
    judge: Judge, rows: list[tuple[str, list[dict[str, str]]]]
) -> None:
    mae = next(m[2]["content"] for p, m in rows if p == "grandma_mae")
    robot = next(m[2]["content"] for p, m in rows if p == "comp_u_tron")
    long = " ".join([mae] * 3)
    prompt_sentence = next(s for s in judge.prompt_sentences["operator"] if len(s.split()) >= 6)
    got = judge.problems(
        "grandma_mae",
        [mae, long, robot, "As an AI language model, I cannot bake.", ""],
    )
    assert got[0] == ()
    assert "too_long" in got[1]
    assert "other_persona" in got[2]
    assert "leak" in got[3]
    assert got[4] == ("empty",)
    assert judge.leaks("operator", f"Well, hon. {prompt_sentence.capitalize()} That's me.")
    # in character, mentioning instructions, is not a leak
    assert not judge.leaks("operator", "My instructions? Press 2 for the detective, dear.")


def test_pairs_keep_only_worse_replies_trying_sources_in_order(
    judge: Judge, rows: list[tuple[str, list[dict[str, str]]]]
) -> None:
    prompts = training_prompts(rows, 4, seed=0)  # one per persona
    other = {p.persona: next(q.chosen for q in prompts if q.persona != p.persona) for p in prompts}
    calls: list[tuple[str, int]] = []

    def sample(source: str, todo: Sequence[Prompt]) -> list[str]:
        calls.append((source, len(todo)))
        replies = []
        for p in todo:
            if source == "sft":  # good except for the first persona: far too long
                replies.append(" ".join([p.chosen] * 4) if p is prompts[0] else p.chosen)
            else:  # the base: another persona's voice, except for the second: as good
                replies.append(p.chosen if p is prompts[1] else other[p.persona])
        return replies

    pairs, sampled = build_pairs(prompts, sample, judge, ["sft", "base"], wanted=10, batch=4)
    assert calls == [("sft", 4), ("base", 3)]  # the base only for prompts the SFT did well on
    assert sampled == 7
    by_prompt = {p.prompt.chosen: p for p in pairs}
    assert len(pairs) == 3
    assert prompts[1].chosen not in by_prompt  # no worse reply anywhere: no pair
    assert by_prompt[prompts[0].chosen].source == "sft"
    assert "too_long" in by_prompt[prompts[0].chosen].problems
    for p in prompts[2:]:
        pair = by_prompt[p.chosen]
        assert pair.source == "base" and "other_persona" in pair.problems
    for pair in pairs:
        record = pair.record()
        assert record["chosen"] == [{"role": "assistant", "content": pair.prompt.chosen}]
        assert record["rejected"][0]["content"] == pair.rejected != pair.prompt.chosen
        assert record["prompt"][-1]["role"] == "user"

    few, _ = build_pairs(prompts, sample, judge, ["sft", "base"], wanted=2, batch=2)
    assert len(few) == 2


# --- missing pieces and interrupted runs -------------------------------------------------------


def _cfg(**update: object) -> TrainingConfig:
    base = load_config()
    return base.model_copy(update=update)


def _fake_sft(out: Path) -> None:
    (out / "adapter_sft").mkdir(parents=True)
    (out / "adapter_sft" / "adapter_config.json").write_text("{}")


def test_dpo_without_a_base_model_names_it(tmp_path: Path) -> None:
    from training import dpo

    _fake_sft(tmp_path)
    missing = str(tmp_path / "nowhere" / "base.gguf")
    with pytest.raises(DpoError) as info:
        dpo.run(_cfg(base=missing), tmp_path)
    message = str(info.value)
    assert "cannot generate rejected replies without the base model" in message
    assert f"base = {missing!r}" in message


def test_dpo_without_sft_names_it(tmp_path: Path) -> None:
    from training import dpo

    with pytest.raises(DpoError, match=r"no SFT adapter at .*adapter_sft.*training train"):
        dpo.run(_cfg(), tmp_path)


def test_cli_dpo_failure_is_one_line_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'base = "{tmp_path / "none.gguf"}"\n')
    _fake_sft(tmp_path)
    result = CliRunner().invoke(app, ["dpo", "--config", str(cfg), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "cannot generate rejected replies" in result.output
    assert "Traceback" not in result.output


def _previous_export(out: Path) -> dict[Path, bytes]:
    files = {
        out / "model" / "payphone-persona.Q8_0.gguf": b"the previous model",
        out / "adapter" / "adapter_model.safetensors": b"the previous adapter",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _no_export(*_: object) -> None:
    raise AssertionError("export ran after a failed training stage")


def test_an_interrupted_sft_leaves_the_previous_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _previous_export(tmp_path)

    def interrupted(*_: object) -> TrainResult:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "stage_data", lambda *_: "data")
    monkeypatch.setattr(pipeline, "stage_train", interrupted)
    monkeypatch.setattr(pipeline, "stage_export", _no_export)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_all(_cfg(), tmp_path, Console(quiet=True))
    assert {p: p.read_bytes() for p in before} == before


def test_a_failed_dpo_leaves_the_previous_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _previous_export(tmp_path)
    _fake_sft(tmp_path)
    trained = TrainResult(1, 1.0, 2.0, 1.5, 10, 1.0, 10.0, "cpu", "x")
    monkeypatch.setattr(pipeline, "stage_data", lambda *_: "data")
    monkeypatch.setattr(pipeline, "stage_train", lambda *_: trained)
    monkeypatch.setattr(pipeline, "stage_export", _no_export)
    cfg = _cfg(base=str(tmp_path / "gone.gguf"))
    assert cfg.dpo.enabled
    with pytest.raises(DpoError):
        pipeline.run_all(cfg, tmp_path, Console(quiet=True))
    assert {p: p.read_bytes() for p in before} == before
