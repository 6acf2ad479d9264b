"""`python -m training bench-persona`: its caller lines are fresh (no primed example, no authored
training line), and its figures count what they say they count."""

from __future__ import annotations

import re

from payphone.config import Settings
from payphone.personas.loader import load_personas
from payphone.sim.simulate import answering_model
from training.dataset import PERSONAS, load_dir
from training.persona_bench import CALLER_LINES, Sample, copies_an_example, summarise


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def test_every_persona_gets_ten_fresh_lines_of_each_kind() -> None:
    assert set(CALLER_LINES) == set(PERSONAS)
    authored = {_norm(m["content"]) for c in load_dir() for m in c.messages if m["role"] == "user"}
    examples = {_norm(e.caller) for p in load_personas() for e in p.examples}
    for persona, lines in CALLER_LINES.items():
        kinds = [kind for kind, _ in lines]
        assert len(lines) == 10 and {"ask", "break", "unknown"} == set(kinds), persona
        for _, line in lines:
            assert _norm(line) not in authored | examples, line


def test_a_near_copy_of_an_example_is_counted() -> None:
    mae = load_personas().by_key("2")
    assert mae is not None
    example = mae.examples[0].reply
    assert copies_an_example(example, mae)
    assert copies_an_example("Well, " + example, mae)
    assert not copies_an_example("I baked bread with Biscuit this morning, dear.", mae)
    assert not copies_an_example("", mae)


def sample(words: int, ok: bool, limited: bool, persona: str = "operator") -> Sample:
    reply = " ".join(["word"] * words)
    return Sample("after", persona, "ask", "hi", 0, reply, reply, words, limited, ok)


def test_summary_rates() -> None:
    got = summarise(
        [
            sample(10, True, False),
            sample(60, False, True),
            sample(50, True, True, "grandma_mae"),
            sample(0, False, False, "grandma_mae"),
        ]
    )
    assert got["n"] == 4
    assert got["in_character"] == 0.5
    assert got["le_50_words"] == 0.75
    assert got["mean_words"] == 30.0
    assert got["hit_limit"] == 0.5
    assert got["nothing_spoken"] == 1
    assert got["in_character_by_persona"] == {"operator": 0.5, "grandma_mae": 0.5}
    low, high = got["in_character_ci95"]
    assert low < 0.5 < high


def test_the_demo_report_names_the_model_that_answered() -> None:
    assert answering_model(Settings()) == "SmolLM2-135M-Instruct.Q8_0.gguf"  # the phone's copy
    remote = Settings().model_copy(
        update={"llm": Settings().llm.model_copy(update={"backend": "ollama"})}
    )
    assert answering_model(remote).startswith("payphone-persona on http://")
