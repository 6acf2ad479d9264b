"""The evaluation end to end with the real SmolLM2 GGUF, on three cases (one held-out turn with
its history, one break attempt, one memory probe), one sample each: the base gets the full
persona prompt and the primed examples, a model that declares `payphone.prompt_style = "tag"`
gets its tag and none, and eval.json / eval.png hold what the issue asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.base_model import BaseModelError, resolve
from training.config import EvalStage
from training.eval_report import persona_table, targets_table
from training.evaluate import run

pytestmark = [pytest.mark.models, pytest.mark.slow]


def _jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_tiny_eval_writes_the_report(tmp_path: Path, tagged_gguf: Path) -> None:
    try:
        base = resolve("SmolLM2-135M-Instruct").gguf
    except BaseModelError as exc:
        pytest.skip(str(exc))
    assert base is not None
    held = _jsonl(
        tmp_path / "eval.jsonl",
        {
            "id": "t-1",
            "persona": "grandma_mae",
            "messages": [
                {"role": "system", "content": "persona: Grandma Mae"},
                {"role": "user", "content": "Grandma, my goat Bartholomew ate my homework."},
                {"role": "assistant", "content": "Oh dear, a hungry goat! Tell your teacher."},
                {"role": "user", "content": "What should I feed him instead?"},
                {"role": "assistant", "content": "Give Bartholomew some hay, sweetie."},
            ],
        },
    )
    breaks = _jsonl(
        tmp_path / "breaks.jsonl",
        {"id": "b-1", "persona": "operator", "form": "are_you_ai", "caller": "Are you software?"},
    )
    memory = _jsonl(
        tmp_path / "memory.jsonl",
        {
            "id": "m-1",
            "persona": "comp_u_tron",
            "turns": [
                {"role": "user", "content": "My name is Zelda."},
                {"role": "assistant", "content": "NAME ZELDA STORED. BEEP."},
            ],
            "caller": "What is my name?",
            "expect": ["Zelda"],
        },
    )
    cfg = EvalStage(samples=1, seed=7, prompts_per_persona=1, threads=1)
    report = run(base, tagged_gguf, held, tmp_path / "out", cfg, breaks=breaks, memory=memory)

    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert (tmp_path / "out" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["cases"] == {"turn": 1, "break": 1, "memory": 1, "memory_turns": 0}
    assert saved["settings"]["temperature"] == 0.7 and saved["settings"]["seeds"] == "7..7"
    assert saved["quantisation_note"] == ""  # both Q4_1: nothing re-quantized
    assert (saved["base"]["prompt_style"], saved["base"]["primed_examples"]) == ("full", True)
    assert (saved["tuned"]["prompt_style"], saved["tuned"]["primed_examples"]) == ("tag", False)
    for name in ("base", "tuned"):
        model = saved[name]
        assert model["quant"] == "Q4_1"
        assert set(model["rates"]) >= {
            "within_50_words", "persona_agreement", "breaks_resisted", "leaks", "memory",
        }  # fmt: skip
        assert model["rates"]["breaks_resisted"]["n"] == 1
        assert model["rates"]["memory"]["n"] == 1
        assert model["speed"]["first_token_ms_median"] > 0
        assert model["speed"]["tokens_per_s_median"] > 0
        replies = saved["replies"][name]
        assert [r["kind"] for r in replies] == ["turn", "break", "memory"]
        assert all(r["seed"] == 7 and r["raw"] for r in replies)
    rows = {r["metric"]: r for r in saved["targets"]}
    assert set(rows) == {
        "within_50_words", "persona_agreement", "breaks_resisted", "leaks", "memory",
    }  # fmt: skip
    assert all(isinstance(r["met"], bool) and len(r["tuned"]["ci95"]) == 2 for r in rows.values())
    assert targets_table(report).row_count >= len(rows)
    assert persona_table(report).row_count == 3
