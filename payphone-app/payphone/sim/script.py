"""Call scripts: YAML lists of steps that drive a simulated phone.

    - offhook
    - wait: 1.5
    - press: "2"          # keypad events
    - tones: "5550101"    # in-band DTMF audio into the mic
    - say: hello.wav      # a WAV (any rate, any channels) into the mic; relative to the script
    - wait_reply          # until the persona has finished speaking (or `wait_reply: 30` seconds)
    - onhook

A malformed script raises `ScriptError` naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

KEYS = set("0123456789*#ABCD")
DEFAULT_REPLY_TIMEOUT_S = 60.0


class ScriptError(Exception):
    """A script that cannot run; the message names file and line."""


@dataclass(frozen=True)
class Step:
    action: str
    line: int
    seconds: float = 0.0
    keys: str = ""
    path: Path | None = None


def _fail(path: Path, line: int, message: str) -> ScriptError:
    return ScriptError(f"{path}:{line}: {message}")


def _step(path: Path, node: yaml.Node) -> Step:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        action, value_node = str(node.value), None
    elif isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        key_node, value_node = node.value[0]
        action = str(key_node.value)
    else:
        raise _fail(path, line, "each step is a word (offhook) or one `action: value` pair")
    value = value_node.value if isinstance(value_node, yaml.ScalarNode) else None
    if value_node is not None and value is None:
        raise _fail(path, line, f"`{action}` takes a single value")
    match action:
        case "offhook" | "onhook":
            if value_node is not None:
                raise _fail(path, line, f"`{action}` takes no value")
            return Step(action, line)
        case "wait" | "wait_reply":
            if value is None and action == "wait":
                raise _fail(path, line, "`wait` needs seconds, e.g. `wait: 1.5`")
            seconds = DEFAULT_REPLY_TIMEOUT_S if value is None else _seconds(path, line, value)
            return Step(action, line, seconds=seconds)
        case "press" | "tones":
            keys = str(value or "")
            if not keys or set(keys) - KEYS:
                raise _fail(path, line, f"`{action}` needs keys from 0-9 * # A-D, got {keys!r}")
            return Step(action, line, keys=keys)
        case "say":
            if not value:
                raise _fail(path, line, "`say` needs a WAV file")
            wav = (path.parent / str(value)).resolve()
            if not wav.is_file():
                raise _fail(path, line, f"no such WAV file: {wav}")
            return Step(action, line, path=wav)
    known = "offhook, onhook, wait, press, tones, say, wait_reply"
    raise _fail(path, line, f"unknown step {action!r}; steps: {known}")


def _seconds(path: Path, line: int, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise _fail(path, line, f"seconds must be a number, got {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise _fail(path, line, f"seconds must be between 0 and 3600, got {seconds}")
    return seconds


def load_script(path: Path) -> list[Step]:
    """Parse and check a script; every step is validated before the call starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise _fail(path, line, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise _fail(path, 1, "the script is empty")
    if not isinstance(root, yaml.SequenceNode):
        raise _fail(path, root.start_mark.line + 1, "a script is a list of steps")
    return [_step(path, node) for node in root.value]
