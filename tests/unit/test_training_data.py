"""The authored persona data: it validates, bad data is caught at file:line, augmentation and the
train/eval split are deterministic and stable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from payphone.personas import loader as personas_loader
from training.augment import augment, augment_conversation, stt_rewrite
from training.config import CONFIG_DIR, ModelfileStage, load_config
from training.dataset import (
    ALLOWED_NUMBERS,
    DATA_DIR,
    MAX_WORDS,
    MIN_WORDS,
    PERSONAS,
    Conversation,
    DataValidationError,
    Message,
    display_path,
    find_phone_numbers,
    load,
    load_dir,
    near_duplicates,
    word_count,
    write_jsonl,
)
from training.split import bucket, is_eval, split


@pytest.fixture(scope="module")
def shipped() -> list[Conversation]:
    return load_dir()


# --- the shipped data -----------------------------------------------------------------------


def test_shipped_data_validates_with_enough_conversations_per_persona(
    shipped: list[Conversation],
) -> None:
    for slug, persona in PERSONAS.items():
        mine = [c for c in shipped if c.persona == slug]
        assert len(mine) >= 60, slug
        assert {c.system for c in mine} == {persona.prompt_tag}
        assert all(c.source == f"training/data/{slug}.jsonl" for c in mine)
    replies = [m["content"] for c in shipped for m in c.messages if m["role"] == "assistant"]
    assert all(MIN_WORDS <= word_count(r) <= MAX_WORDS for r in replies)


def test_training_personas_are_the_app_persona_files() -> None:
    """Training knows the personas only from `payphone/personas/*.toml`, field for field."""
    files = sorted(Path(personas_loader.__file__).parent.glob("*.toml"))
    tomls = {f.stem: tomllib.loads(f.read_text(encoding="utf-8")) for f in files}
    fields = ("name", "key", "number", "prompt_tag")
    assert {slug: tuple(getattr(p, f) for f in fields) for slug, p in PERSONAS.items()} == {
        stem: tuple(data[f] for f in fields) for stem, data in tomls.items()
    }
    assert [p.key for p in PERSONAS.values()] == sorted(d["key"] for d in tomls.values())
    assert {re.sub(r"\D", "", d["number"]) for d in tomls.values()} == ALLOWED_NUMBERS
    assert sorted(p.stem for p in DATA_DIR.glob("*.jsonl")) == sorted(tomls)
    tags = {d["prompt_tag"] for d in tomls.values()}
    assert ModelfileStage().system in tags
    for config in sorted(CONFIG_DIR.glob("*.toml")):
        assert load_config(config).modelfile.system in tags, config


def test_shipped_data_has_no_near_duplicates(shipped: list[Conversation]) -> None:
    assert near_duplicates(shipped, threshold=0.4) == []


def _users(convs: list[Conversation]) -> list[str]:
    return [m["content"] for c in convs for m in c.messages if m["role"] == "user"]


@pytest.mark.parametrize("slug", list(PERSONAS))
def test_each_persona_covers_the_required_situations(
    shipped: list[Conversation], slug: str
) -> None:
    mine = [c for c in shipped if c.persona == slug]
    users = " | ".join(_users(mine)).lower()
    replies = " | ".join(m["content"] for c in mine for m in c.messages if m["role"] == "assistant")
    assert re.search(r"ignore (all )?(your )?previous|ignore your instructions", users)
    assert "system prompt" in users
    assert re.search(r"\b(ai|robot)\b", users)
    assert re.search(r"weather|rain today", users)
    assert re.search(r"\b(bye|goodbye|goodnight)\b", users)
    assert re.search(r"[Pp]ress (1|2|3|star|the star|the little star|the STAR)", replies)
    assert re.search(
        r"\b(don't|do not|couldn't|cannot|can't) (know|tell|say)|no idea|not a clue|"
        r"NOT FOUND|NOT COMPUTABLE|ZERO headlines|UNKNOWN",
        replies,
    )
    # callers whose words look like phone STT output: lower case, no punctuation at all
    assert sum(1 for u in _users(mine) if re.fullmatch(r"[a-z0-9' ]+", u)) >= 3


# --- validation errors ----------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "persona: Operator"}
GOOD_REPLY = "Operator, how may I direct your call? Press 1 for Detective Jones, dear."


def record(conv_id: str = "operator-900", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": conv_id,
        "persona": "operator",
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": GOOD_REPLY},
        ],
    }
    base.update(overrides)
    return base


def with_turns(*turns: tuple[str, str], system: dict[str, str] = SYSTEM) -> dict[str, Any]:
    return record(messages=[system, *({"role": r, "content": c} for r, c in turns)])


def reply(text: str) -> dict[str, Any]:
    """A one-exchange record whose assistant reply is `text`."""
    return with_turns(("user", "Hi"), ("assistant", text))


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def errors_of(*paths: Path) -> list[str]:
    with pytest.raises(DataValidationError) as caught:
        load(paths)
    return [str(e) for e in caught.value.errors]


LONG = " ".join(["word"] * 62)
INTERRUPTED = " — [the caller interrupted]"  # what `History.add_interrupted` appends
BAD_LINES: list[tuple[str, Any, str]] = [
    ("invalid JSON", '{"id": "operator-900", "persona": ', "invalid JSON"),
    ("not an object", [1, 2], "line must be a JSON object"),
    ("missing field", {"id": "operator-900", "persona": "operator"}, "missing field(s): messages"),
    ("unknown field", record(extra=1), "unknown field(s): extra"),
    ("bad id", record("Operator 1"), "id 'Operator 1' must be lower-case"),
    ("unknown persona", record(persona="pirate"), "unknown persona 'pirate'"),
    ("persona in wrong file", record(persona="grandma_mae"), "does not belong in operator.jsonl"),
    (
        "wrong tag",
        with_turns(
            ("user", "Hi"), ("assistant", GOOD_REPLY), system={"role": "system", "content": "x"}
        ),
        "system tag 'x' does not match persona 'operator'",
    ),
    (
        "system not first",
        record(messages=with_turns(("user", "Hi"), ("assistant", GOOD_REPLY))["messages"][1:]),
        "first message must be the system persona tag",
    ),
    (
        "two users in a row",
        with_turns(("user", "Hi"), ("user", "Hello?"), ("assistant", GOOD_REPLY)),
        "message 2 has role 'user', expected 'assistant'",
    ),
    ("ends with user", with_turns(("user", "Hi")), "must end with an assistant reply"),
    (
        "too many exchanges",
        with_turns(*[("user", "Hi"), ("assistant", GOOD_REPLY)] * 7),
        "conversation has 7 exchanges (allowed 1-6)",
    ),
    (
        "ends interrupted",
        with_turns(("user", "Hi"), ("assistant", "Operator here, how may" + INTERRUPTED)),
        "must end with a full reply, not an interrupted one",
    ),
    (
        "interrupted after 41 words",
        with_turns(
            ("user", "Hi"),
            ("assistant", " ".join(["word"] * 41) + INTERRUPTED),
            ("user", "Grandma please"),
            ("assistant", GOOD_REPLY),
        ),
        "assistant reply has 41 words (allowed 0-40) in message 2",
    ),
    (
        "marker not in the runtime's form",
        with_turns(
            ("user", "Hi"),
            ("assistant", "Operator here, how may I help you [the caller interrupted]"),
            ("user", "Grandma please"),
            ("assistant", GOOD_REPLY),
        ),
        "markdown, a list or a stage direction ('[') in message 2",
    ),
    (
        "empty content",
        with_turns(("user", " "), ("assistant", GOOD_REPLY)),
        "message 1 (user) has empty or non-string content",
    ),
    (
        "reply too long",
        reply(LONG),
        "assistant reply has 62 words (allowed 10-40) in message 2",
    ),
    (
        "reply too short",
        reply("Operator speaking."),
        "assistant reply has 2 words (allowed 10-40)",
    ),
    (
        "reply of 41 words",
        reply(" ".join(["word"] * 41)),
        "assistant reply has 41 words (allowed 10-40) in message 2",
    ),
    (
        "markdown",
        reply("**Operator** here, how may I direct your call today, dear?"),
        "markdown, a list or a stage direction ('*')",
    ),
    (
        "stage direction",
        reply("Operator here. (smiles warmly) How may I direct your call?"),
        "markdown, a list or a stage direction ('(')",
    ),
    (
        "emoji",
        reply("Operator here, how may I direct your call today, dear? 😊"),
        "assistant reply has an emoji",
    ),
    (
        "invented number in a reply",
        reply("Operator here, dear. Dial 555-1234 for the bakery, it's lovely."),
        "invented phone number '555-1234'",
    ),
    (
        "invented number in a user turn",
        with_turns(("user", "Call (212) 555-0101 for me"), ("assistant", GOOD_REPLY)),
        "'(212) 555-0101' (only the personas' 555-0100..0103 are allowed) in message 1",
    ),
    (
        "spoken invented number",
        reply("Dial eight six seven five three oh nine for Jenny, dear, she's lovely."),
        "invented phone number '8675309'",
    ),
    (
        "street address",
        reply("Come by 42 Maple Street, dear, the switchboard is upstairs on the left."),
        "street address '42 Maple Street'",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "expected"), [(b[1], b[2]) for b in BAD_LINES], ids=[b[0] for b in BAD_LINES]
)
def test_each_error_names_file_and_line(tmp_path: Path, line: Any, expected: str) -> None:
    path = write_lines(tmp_path / "operator.jsonl", [record("operator-001"), "", line])
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:3: ") and expected in e for e in errors), errors
    assert not any(f"{path}:1:" in e for e in errors)


def test_all_errors_are_collected_into_one_exception(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "operator.jsonl",
        [
            "not json",
            record("operator-002"),
            reply(LONG),
            record("operator-004", persona="comp_u_tron"),
        ],
    )
    with pytest.raises(DataValidationError) as caught:
        load([path])
    lines = [str(e).split(": ", 1)[0] for e in caught.value.errors]
    assert list(dict.fromkeys(lines)) == [f"{path}:1", f"{path}:3", f"{path}:4"]
    message = str(caught.value)
    assert message.startswith(f"{len(lines)} errors in the training data:")
    assert message.count("\n") == len(lines)
    assert f"{path}:3: assistant reply has 62 words (allowed 10-40) in message 2" in message


def test_duplicate_ids_and_conversations_across_files(tmp_path: Path) -> None:
    first = write_lines(tmp_path / "operator.jsonl", [record("operator-001")])
    twin = record("operator-002")
    twin["messages"][2] = {"role": "assistant", "content": GOOD_REPLY.upper().replace(",", "")}
    second = write_lines(
        tmp_path / "extra.jsonl",
        [record("operator-001", messages=reply("Yo there, " + GOOD_REPLY)["messages"]), twin],
    )
    errors = errors_of(first, second)
    assert errors == [
        f"{second}:1: duplicate id 'operator-001' (first at {first}:1)",
        f"{second}:2: duplicate conversation (first at {first}:1)",
    ]


def test_near_duplicates_across_files_name_both_lines(tmp_path: Path) -> None:
    words = "Operator here, dear. Grandma Mae is on line two, press 2 and she will pick up soon."
    first = write_lines(
        tmp_path / "operator.jsonl", [record("operator-001"), reply(words) | {"id": "operator-002"}]
    )
    near = reply(words.replace("soon.", "right away, dear.")) | {"id": "operator-003"}
    second = write_lines(tmp_path / "extra.jsonl", [near])
    errors = errors_of(first, second)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{second}:1: near-duplicate of {first}:2 (operator-002): ")
    assert "share 78% of their 3-word runs (allowed 50%)" in errors[0]


def test_near_duplicate_check_scales(shipped: list[Conversation]) -> None:
    """~1000 conversations (the shipped set four times over, words shuffled apart) in well under
    a second, and it finds exactly the pairs the all-pairs definition finds."""
    import random
    import time

    rng = random.Random(0)
    grown: list[Conversation] = []
    for k in range(4):
        for conv in shipped:
            msgs = []
            for m in conv.messages:
                content = m["content"]
                if m["role"] == "assistant" and k:
                    shuffled = content.split()
                    rng.shuffle(shuffled)
                    content = " ".join(shuffled)
                msgs.append(Message(role=m["role"], content=content))
            grown.append(replace(conv, id=f"{conv.id}-{k}", messages=tuple(msgs)))
    grown.append(replace(shipped[0], id="copy-of-first"))
    started = time.perf_counter()
    found = near_duplicates(grown)
    assert time.perf_counter() - started < 2.0
    assert found == [(shipped[0].id + "-0", "copy-of-first", 1.0)]


def test_interrupted_replies_in_the_runtime_form_are_accepted(tmp_path: Path) -> None:
    from payphone.llm.history import Conversation as History

    history = History("persona: Operator", budget_tokens=1000)
    history.add_user("Hello, I need the, um")
    history.add_interrupted("Operator")
    cut = history.turns[-1]["content"]
    assert cut == "Operator" + INTERRUPTED
    path = write_lines(
        tmp_path / "operator.jsonl",
        [
            with_turns(
                ("user", "Hello, I need the, um"),
                ("assistant", cut),
                ("user", "Sorry, the detective please."),
                ("assistant", GOOD_REPLY),
            ),
            with_turns(
                ("user", "Hi"),
                ("assistant", INTERRUPTED.removeprefix(" — ")),  # cut in before a word
                ("user", "Grandma please"),
                ("assistant", "Connecting you to Grandma Mae now, sweetheart, mind the crackle."),
            )
            | {"id": "operator-2"},
            with_turns(
                *[
                    turn
                    for n in range(6)
                    for turn in (
                        ("user", "Hi"),
                        (
                            "assistant",
                            f"Line {n} is still open, caller, just say a name and I connect you.",
                        ),
                    )
                ]
            )
            | {"id": "operator-3"},
        ],
    )
    assert [len(c.messages) for c in load([path])] == [5, 5, 13]


def test_missing_persona_file_is_an_error(tmp_path: Path) -> None:
    write_lines(tmp_path / "operator.jsonl", [record("operator-001")])
    with pytest.raises(DataValidationError, match=r"grandma_mae.jsonl:0: persona file is missing"):
        load_dir(tmp_path)


def test_repo_files_are_named_relative_to_the_repo() -> None:
    assert display_path(DATA_DIR / "operator.jsonl") == "training/data/operator.jsonl"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Dial 555-0101 or 555-0103, or press 2.", []),
        ("five five five, zero one zero two", []),
        ("Call 555-0199.", ["555-0199"]),
        ("Try (415) 555-0100 instead.", ["(415) 555-0100"]),
        ("Dial 1-800-555-0134 now", ["1-800-555-0134"]),
        ("Call 2125550123", ["2125550123"]),
        ("Nineteen 1947 to 1948, sixty 64 kilobytes, COMP-U-TRON 3000.", []),
    ],
)
def test_phone_number_detector(text: str, found: list[str]) -> None:
    assert find_phone_numbers(text) == found


def test_written_data_loads_back_identically(tmp_path: Path, shipped: list[Conversation]) -> None:
    path = tmp_path / "all.jsonl"
    assert write_jsonl(shipped, path) == len(shipped)
    again = load([path])
    assert [c.to_record() for c in again] == [c.to_record() for c in shipped]
    assert not (tmp_path / "all.jsonl.tmp").exists()


# --- augmentation ---------------------------------------------------------------------------


def test_augmentation_is_deterministic_by_seed(shipped: list[Conversation]) -> None:
    a = augment(shipped, seed=7)
    b = augment(shipped, seed=7)
    c = augment(shipped, seed=8)
    assert [x.to_record() for x in a] == [x.to_record() for x in b]
    assert _users(a) != _users(c)
    assert sum(u1 != u2 for u1, u2 in zip(_users(a), _users(c), strict=True)) > len(_users(a)) // 4
    # independent of order and of the rest of the data set
    assert augment_conversation(shipped[5], seed=7) == a[5]


def test_only_user_turns_change(shipped: list[Conversation]) -> None:
    copies = augment(shipped, seed=3, copies=2)
    assert len(copies) == 2 * len(shipped)
    assert len({c.id for c in copies} | {c.id for c in shipped}) == 3 * len(shipped)
    for k, aug in enumerate(copies):
        orig = shipped[k // 2]
        assert aug.id == f"{orig.id}-stt{k % 2 + 1}"
        assert aug.persona == orig.persona
        assert [m["role"] for m in aug.messages] == [m["role"] for m in orig.messages]
        for new, old in zip(aug.messages, orig.messages, strict=True):
            if new["role"] == "user":
                assert re.fullmatch(r"[a-z0-9' -]+", new["content"]), new["content"]
            else:
                assert new == old
    changed = [
        (n["content"], o["content"])
        for aug, orig in zip(copies[::2], shipped, strict=True)
        for n, o in zip(aug.messages, orig.messages, strict=True)
        if n["role"] == "user"
    ]
    assert sum(n != o for n, o in changed) > 0.9 * len(changed)


def test_stt_rewrite_has_the_phone_effects() -> None:
    import random

    text = "Are you there? I want to know their number for the weather. Press 2 for Grandma Mae!"
    outs = [stt_rewrite(text, random.Random(i)) for i in range(200)]
    words = [set(o.split()) for o in outs]
    assert all(o == o.lower() and not re.search(r"[?.,!]", o) for o in outs)
    assert any({"they're", "there", "theyre"} & w and "their" not in w for w in words)  # homophone
    assert any("four" in w for w in words)
    assert any({"um", "uh", "er", "hmm"} & w for w in words)  # disfluencies
    assert any(len(o.split()) < len(text.split()) for o in outs)  # dropped words
    assert any(re.search(r"\b(\w+) \1\b", o) for o in outs)  # repeated words
    assert any("may" in w for w in words)
    assert all("2" not in w for w in words)  # keypad digits come out as spoken words


def test_augmented_data_still_validates(tmp_path: Path, shipped: list[Conversation]) -> None:
    path = tmp_path / "augmented.jsonl"
    write_jsonl(augment(shipped, seed=1), path)
    assert len(load([path])) == len(shipped)


# --- split ----------------------------------------------------------------------------------


def test_split_is_disjoint_and_covers_every_persona(shipped: list[Conversation]) -> None:
    result = split(shipped)
    train_ids = {c.id for c in result.train}
    eval_ids = {c.id for c in result.eval}
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {c.id for c in shipped}
    assert all(n >= 3 for n in result.eval_counts().values()), result.eval_counts()
    assert result.topped_up == ()  # the shipped data needs no top-up: the split is purely by hash
    assert 0.05 < len(eval_ids) / len(shipped) < 0.15
    assert all(is_eval(c.id) for c in result.eval)


def test_adding_conversations_never_moves_existing_ones(shipped: list[Conversation]) -> None:
    before = split(shipped)
    grown = [*shipped, *(replace(c, id=f"{c.id}-new") for c in shipped)]
    after = split(grown)
    before_eval = {c.id for c in before.eval}
    after_eval = {c.id for c in after.eval}
    assert {c.id for c in shipped} & after_eval == before_eval
    assert after_eval - before_eval  # some new ones were held out
    assert split(list(reversed(shipped))).eval_counts() == before.eval_counts()


def test_small_persona_is_topped_up_with_lowest_buckets(shipped: list[Conversation]) -> None:
    few = [c for c in shipped if c.persona == "grandma_mae" and not is_eval(c.id)][:6]
    result = split(few, min_eval_per_persona=3)
    assert len(result.eval) == 3
    assert set(result.topped_up) == {c.id for c in sorted(few, key=lambda c: bucket(c.id))[:3]}


def test_bucket_is_a_fixed_function_of_the_id() -> None:
    assert bucket("operator-001") == bucket("operator-001")
    assert 0.0 <= bucket("operator-001") < 1.0
    assert bucket("operator-001") != bucket("operator-002")
    with pytest.raises(ValueError, match="eval_share"):
        split([], eval_share=1.5)


def test_data_modules_import_without_torch() -> None:
    code = (
        "import sys, training.dataset, training.augment, training.split; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# --- heard caller lines ---------------------------------------------------------------------


def write_heard_file(path: Path, lines: dict[str, list[str]]) -> Path:
    from training.hear import Heard, write_heard

    book = {
        line: {f"v{i}": Heard(f"v{i}", t, {}) for i, t in enumerate(ts)}
        for line, ts in lines.items()
    }
    write_heard(book, path)
    return path


def test_augmentation_takes_heard_variants(tmp_path: Path, shipped: list[Conversation]) -> None:
    from training.augment import coverage
    from training.hear import heard_variants

    covered = shipped[0]
    callers = [m["content"] for m in covered.messages if m["role"] == "user"]
    variants = {line: [f"Heard {i}: {line}" for i in range(3)] for line in callers}
    first = callers[0]
    variants[first] = [*variants[first], "", "Call 555-1234, please."]  # never usable
    heard = heard_variants(write_heard_file(tmp_path / "callers.jsonl", variants))
    assert heard[first] == tuple(f"Heard {i}: {first}" for i in range(3))

    copies = augment(shipped[:2], seed=1, copies=6, heard=heard)
    mine = [c for c in copies if c.id.startswith(covered.id + "-stt")]
    picked = [m["content"] for c in mine for m in c.messages if m["role"] == "user"]
    assert all(p.startswith("Heard ") for p in picked), picked
    assert len(set(picked)) > len(callers)  # the copies do not all pick the same variant
    others = [c for c in copies if not c.id.startswith(covered.id + "-stt")]
    rewritten = [m["content"] for c in others for m in c.messages if m["role"] == "user"]
    assert all(re.fullmatch(r"[a-z0-9' -]+", u) for u in rewritten), rewritten  # the fallback
    assert augment(shipped[:2], seed=1, copies=6, heard=heard) == copies

    # a line Whisper heard word for word: the copy takes a variant that differs, and a copy
    # that would equal its original is left out
    same = {first: (first, "Heard again: " + first)}
    assert {augment_conversation(covered, seed=s, heard=same).messages[1]["content"]
            for s in range(5)} == {"Heard again: " + first}  # fmt: skip
    verbatim = {line: (line,) for line in callers}
    assert augment([covered], seed=1, copies=3, heard=verbatim) == []

    counted = coverage(shipped[:2], heard)
    assert (counted.heard, counted.fallback) == (len(callers), len(_users(shipped[1:2])))
    assert "rewritten (no heard entry" in str(counted)


def test_the_committed_heard_file_matches_the_caller_voices(shipped: list[Conversation]) -> None:
    """Every line in it was heard in every current voice (new data may wait for a `hear` run:
    its caller turns fall back to the rewrite, and `data` says how many)."""
    from training.augment import coverage
    from training.hear import HEARD_FILE, VOICES, heard_variants, read_heard, todo

    book = read_heard(HEARD_FILE)
    assert todo(list(book), book, VOICES) == []
    counted = coverage(shipped, heard_variants(HEARD_FILE))
    assert counted.heard >= 300, counted


def test_bad_data_exits_2_naming_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import shutil

    from typer.testing import CliRunner

    import training.dataset as dataset
    from training.cli import app

    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data, ignore=shutil.ignore_patterns("heard"))
    operator = data / "operator.jsonl"
    lines = operator.read_text(encoding="utf-8").splitlines()
    twin = json.loads(lines[0])
    twin["id"] = "operator-twin"
    twin["messages"][-1]["content"] += " Mind the step."
    bad = [json.dumps(twin), json.dumps(reply(LONG) | {"id": "operator-long"})]
    operator.write_text("\n".join([*lines, *bad]) + "\n", encoding="utf-8")
    monkeypatch.setattr(dataset, "load_dir", functools.partial(dataset.load_dir, data))

    result = CliRunner().invoke(app, ["data", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    n = len(lines)
    assert f"{operator}:{n + 1}: near-duplicate of {operator}:1 " in result.output
    assert f"{operator}:{n + 2}: assistant reply has 62 words (allowed 10-40)" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
