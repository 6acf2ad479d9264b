"""Primed example exchanges: authored per persona, validated, sent after the full prompt as a fixed
prefix that trimming never touches, and not sent to a model tuned on the persona tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from payphone.call.session import Call
from payphone.llm.history import READ_AHEAD_RESERVE_TOKENS, Conversation, choose_system_prompt
from payphone.personas.loader import (
    MAX_EXAMPLE_WORDS,
    SHIPPED_DIR,
    load_personas,
)
from payphone.sim.stand_ins import ScriptedBackend
from training.dataset import load_dir
from training.persona_classifier import PersonaClassifier


def test_every_shipped_persona_has_short_spoken_examples() -> None:
    book = load_personas()
    assert not book.errors
    for persona in book:
        assert 3 <= len(persona.examples) <= 5, persona.id
        for example in persona.examples:
            assert len(example.reply.split()) <= MAX_EXAMPLE_WORDS
            assert example.caller.strip() and example.reply.strip()


def test_the_examples_sound_like_their_persona() -> None:
    """The classifier trained on the authored data hears each example reply as its persona."""
    classifier = PersonaClassifier.from_conversations(load_dir())
    for persona in load_personas():
        replies = [e.reply for e in persona.examples]
        assert classifier.predict(replies) == [persona.id] * len(replies), persona.id


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (" ".join(["word"] * (MAX_EXAMPLE_WORDS + 1)), "words"),
        ("Oh *smiles* sweetie.", "markdown"),
    ],
)
def test_a_long_or_unspeakable_example_names_file_and_field(
    tmp_path: Path, reply: str, problem: str
) -> None:
    text = (SHIPPED_DIR / "grandma_mae.toml").read_text(encoding="utf-8")
    text = text.replace("[voice]", f'[[examples]]\ncaller = "Hi"\nreply = "{reply}"\n\n[voice]', 1)
    (tmp_path / "grandma_mae.toml").write_text(text, "utf-8")
    book = load_personas(tmp_path)
    [error] = book.errors
    assert "grandma_mae.toml" in error and "examples.4.reply" in error and problem in error
    assert {p.id for p in book} == {"operator", "detective_jones", "comp_u_tron"}


def test_examples_follow_the_system_prompt_and_are_never_trimmed() -> None:
    pairs = [("Who are you?", "Jones. Private eye."), ("Nice night?", "Wet. Always wet.")]
    convo = Conversation("You are Jones.", budget_tokens=90, examples=pairs)
    prefix = convo.prefix()
    assert [m["role"] for m in prefix] == ["system", "user", "assistant", "user", "assistant"]
    assert convo.examples == prefix[1:]
    for n in range(12):
        convo.add_user(f"question number {n} with a few more words to use the budget")
        convo.add_assistant(f"answer number {n}, also long enough to cost a few tokens")
    convo.add_user("the latest question")
    sent = convo.messages()
    assert sent[: len(prefix)] == prefix  # the fixed prefix, whatever the budget
    assert sent[-1]["content"] == "the latest question"
    assert sent[len(prefix)]["role"] == "user"  # old turns dropped whole, a user turn first
    assert len(sent) < len(prefix) + 25
    convo.reset("You are Mae.")
    assert convo.messages() == [{"role": "system", "content": "You are Mae."}]


@pytest.mark.parametrize(("style", "with_examples"), [("full", True), ("tag", False)])
def test_a_call_sends_examples_only_with_the_full_prompt(style: str, with_examples: bool) -> None:
    mae = load_personas().by_key("2")
    assert mae is not None

    class Options:
        prompt_style = style
        history_tokens = 1024

    class Deps:
        backend = ScriptedBackend()  # declares no prompt style: the setting decides

    fake = Call.__new__(Call)
    fake.options = Options()  # type: ignore[assignment]
    fake.deps = Deps()  # type: ignore[assignment]
    convo = fake._conversation_for(mae)
    assert convo.system_prompt == choose_system_prompt(style, mae.prompt_tag, mae.prompt)  # type: ignore[arg-type]
    assert bool(convo.examples) is with_examples
    if with_examples:
        assert convo.examples[-1]["content"] == mae.examples[-1].reply


def test_the_history_is_read_ahead_only_while_the_next_request_keeps_it_whole() -> None:
    """Near the budget the next request (with the caller's new line) drops old turns: reading
    the history ahead then would be wasted, and would hold up that turn."""
    budget = 200
    convo = Conversation("You are the Operator.", budget, examples=[("Hi", "Operator.")])
    assert convo.read_ahead() is None  # no turns yet: the warm-up read the prefix
    convo.add_user("Can you connect me to the bakery?")
    assert convo.read_ahead() is None  # no reply yet to read
    convo.add_assistant("Connecting you now, hon.")
    assert convo.read_ahead() == convo.messages()
    while sum(convo.tokens(m) for m in convo.messages()) + READ_AHEAD_RESERVE_TOKENS <= budget:
        convo.add_user("And the train station, please, the one on Main Street.")
        convo.add_assistant("Right away, hon. Hold the line while I ring them for you.")
    assert convo.read_ahead() is None
