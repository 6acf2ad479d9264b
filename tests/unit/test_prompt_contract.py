"""The prompt contract: the style a model declares decides the system prompt; the Modelfile
templates send that system prompt exactly once, rendered the way Ollama renders them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from payphone.llm.prompt_style import PROMPT_STYLE_KEY, Declared, choose, declared_style
from tests.helpers import REPO, run_module
from training import modelfile

from .test_training_pipeline import SMOL_TEMPLATE

TAGGED = Declared("tag", "GGUF persona.gguf")
UNTAGGED = Declared(None, "GGUF SmolLM2.gguf")


def test_auto_follows_the_model_and_a_setting_overrides_it() -> None:
    assert choose("auto", TAGGED).style == "tag"
    assert choose("auto", Declared("full", "x")).style == "full"
    assert choose("auto", UNTAGGED).style == "full"  # a base model gets the whole prompt
    assert choose("auto", None).style == "full"  # not asked yet (Pi #2 not reached)
    assert choose("full", TAGGED).style == "full"
    assert choose("tag", UNTAGGED).style == "tag"
    assert "persona.gguf" in choose("auto", TAGGED).source
    assert PROMPT_STYLE_KEY in choose("auto", UNTAGGED).source
    assert "llm.prompt_style" in choose("tag", TAGGED).source
    assert choose("auto", TAGGED).system_prompt("persona: Mae", "You are Mae.") == "persona: Mae"
    assert choose("auto", UNTAGGED).system_prompt("persona: Mae", "You are Mae.") == "You are Mae."


@pytest.mark.parametrize("value", ["TAG", "short", 1, None])
def test_an_odd_value_in_the_model_counts_as_no_contract(value: object) -> None:
    assert declared_style({PROMPT_STYLE_KEY: value}, "m").style is None
    assert declared_style({PROMPT_STYLE_KEY: b"tag"}, "m").style == "tag"


def test_a_bad_prompt_style_setting_exits_2_naming_it() -> None:
    result = run_module("payphone", "config", env={"PAYPHONE_LLM__PROMPT_STYLE": "tags"})
    assert result.returncode == 2
    assert "PAYPHONE_LLM__PROMPT_STYLE" in result.stderr
    assert "'auto', 'tag', 'full'" in result.stderr
    assert "Traceback" not in result.stderr


# --- the Modelfile templates, as Ollama renders them ------------------------------------------

DEPLOY_TEMPLATE = REPO / "deploy" / "Modelfile.template"
SYSTEM = "persona: Operator"
# what Ollama did before (and the template sent twice): .System and the range over .Messages
OLD_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)


def triple_quoted(text: str, keyword: str) -> str:
    """A Modelfile's `KEYWORD \"\"\"...\"\"\"` block."""
    found = re.search(rf'^{keyword} """(.*?)"""', text, re.S | re.M)
    assert found, keyword
    return found.group(1)


def templates() -> dict[str, str]:
    generated = modelfile.go_template(modelfile.analyse(SMOL_TEMPLATE))
    return {
        "deploy": triple_quoted(DEPLOY_TEMPLATE.read_text(), "TEMPLATE"),
        "training": generated,
    }


@pytest.mark.parametrize("name", ["deploy", "training"])
def test_templates_range_over_messages_and_never_print_system(name: str) -> None:
    text = templates()[name]
    assert "{{- range .Messages }}" in text
    assert ".System" not in text  # Ollama also keeps the system prompt in .Messages


# Ollama's chat path, copied from its source (github.com/ollama/ollama, server/routes.go
# ChatHandler and template/template.go Execute + collate): the Modelfile's SYSTEM is put first
# when the request has no system message; consecutive messages of one role are merged; the
# template gets every message AND all system text joined as .System.
OLLAMA_RENDER = """
package main

import ("encoding/json"; "os"; "strings"; "text/template")

type Message struct { Role string `json:"role"`; Content string `json:"content"` }

func main() {
    src, _ := os.ReadFile(os.Args[1])
    var msgs []Message
    data, _ := os.ReadFile(os.Args[2])
    if err := json.Unmarshal(data, &msgs); err != nil { panic(err) }
    modelfileSystem := os.Args[3]
    if len(msgs) == 0 || (msgs[0].Role != "system" && modelfileSystem != "") {
        msgs = append([]Message{{Role: "system", Content: modelfileSystem}}, msgs...)
    }
    var system []string
    var collated []*Message
    for i := range msgs {
        if msgs[i].Role == "system" { system = append(system, msgs[i].Content) }
        if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role {
            collated[len(collated)-1].Content += "\\n\\n" + msgs[i].Content
        } else {
            collated = append(collated, &msgs[i])
        }
    }
    t := template.Must(template.New("t").Parse(string(src)))
    err := t.Execute(os.Stdout, map[string]any{
        "System": strings.Join(system, "\\n\\n"), "Messages": collated,
    })
    if err != nil { panic(err) }
}
"""

REQUESTS = {
    "phone": [
        {"role": "system", "content": "persona: Grandma Mae"},
        {"role": "user", "content": "hi"},
    ],
    "no-system": [{"role": "user", "content": "hello?"}],
    "multi-turn": [
        {"role": "system", "content": "persona: Detective Jones"},
        {"role": "user", "content": "who's there"},
        {"role": "assistant", "content": "Jones. It's raining, kid."},
        {"role": "user", "content": "a case"},
    ],
}


def ollama_render(tmp_path: Path, template: str, messages: list[dict[str, str]]) -> str:
    (tmp_path / "main.go").write_text(textwrap.dedent(OLLAMA_RENDER))
    (tmp_path / "t.tmpl").write_text(template)
    (tmp_path / "m.json").write_text(json.dumps(messages))
    done = subprocess.run(
        ["go", "run", "main.go", "t.tmpl", "m.json", SYSTEM],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GO111MODULE": "off"},
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="`go` is not installed (golang-go)")
def test_ollama_sends_the_system_prompt_once(tmp_path: Path) -> None:
    """Each template, each request: one system block, holding the phone's system prompt (or
    the Modelfile's SYSTEM when the request has none); the old template sent it twice."""
    for name, template in templates().items():
        for case, messages in REQUESTS.items():
            prompt = ollama_render(tmp_path, template, messages)
            wanted = messages[0]["content"] if messages[0]["role"] == "system" else SYSTEM
            assert prompt.count("<|im_start|>system\n") == 1, (name, case, prompt)
            assert prompt.count(wanted) == 1, (name, case, prompt)
            assert prompt.startswith(f"<|im_start|>system\n{wanted}<|im_end|>\n"), (name, case)
            assert prompt.endswith("<|im_start|>assistant\n")
            # and the rest as the GGUF's own Jinja template renders the same conversation
            with_system = (
                messages
                if messages[0]["role"] == "system"
                else [
                    {"role": "system", "content": SYSTEM},
                    *messages,
                ]
            )
            assert prompt == modelfile.render_jinja(SMOL_TEMPLATE, with_system, True), name
    old = ollama_render(tmp_path, OLD_TEMPLATE, REQUESTS["phone"])
    assert old.count("persona: Grandma Mae") == 2  # the harness sees what Ollama did
