"""Call scripts: what parses, and every error with its line number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from payphone.sim.script import ScriptError, load_script


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "call.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_step_kind(tmp_path: Path) -> None:
    import wave

    with wave.open(str(tmp_path / "hi.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(160, dtype=np.int16).tobytes())
    steps = load_script(
        write(
            tmp_path,
            "- offhook\n- wait: 0.5\n- press: '2'\n- tones: '5550101'\n- say: hi.wav\n"
            "- wait_reply\n- wait_reply: 12\n- onhook\n",
        )
    )
    assert [s.action for s in steps] == [
        "offhook",
        "wait",
        "press",
        "tones",
        "say",
        "wait_reply",
        "wait_reply",
        "onhook",
    ]
    assert steps[1].seconds == 0.5
    assert steps[2].keys == "2"
    assert steps[4].path == (tmp_path / "hi.wav").resolve()
    assert steps[5].seconds == 60.0 and steps[6].seconds == 12.0
    assert [s.line for s in steps] == list(range(1, 9))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("- offhook\n- dance\n", 2, "unknown step 'dance'"),
        ("- offhook\n- wait: soon\n", 2, "seconds must be a number"),
        ("- offhook\n\n- press: '12x'\n", 3, "needs keys"),
        ("- say: missing.wav\n", 1, "no such WAV file"),
        ("- offhook\n- wait\n", 2, "`wait` needs seconds"),
        ("- offhook: now\n", 1, "takes no value"),
        ("offhook: yes\n", 1, "a list of steps"),
        ("- offhook\n- [a, b\n", 3, "not valid YAML"),
        ("", 1, "empty"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScriptError) as info:
        load_script(path)
    assert str(info.value).startswith(f"{path}:{line}:")
    assert message in str(info.value)
