"""The Ollama Modelfile for the exported GGUF: deploy runs `ollama create NAME -f Modelfile`.

Ollama does not run the GGUF's Jinja chat template; it needs a Go `TEMPLATE`. We write the
ChatML one and derive its default system prompt from the Jinja template itself, so both render
byte-identical prompts (tests render both with Go's text/template when `go` is installed).
Like Ollama's own `template/chatml.gotmpl` it ranges over `.Messages` and never prints `.System`:
Ollama keeps system messages in `.Messages` (and copies them into `.System` as well), so a
template printing both would send the system prompt twice.

The prompt style the model was trained on travels inside the GGUF (`payphone.prompt_style`,
written by the export); Ollama keeps every GGUF key and `ollama show` lists it under
`model_info`, which is where the phone reads it. The Modelfile only repeats it as a comment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from payphone.llm.prompt_style import PROMPT_STYLE_KEY
from training.config import ModelfileStage

CHATML_STOPS = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


class ModelfileError(ValueError):
    """The chat template has no Go equivalent here."""


@dataclass(frozen=True)
class ChatTemplate:
    """What the Go template needs to know about the Jinja one."""

    jinja: str
    default_system: str | None


def gguf_strings(path: Path, *keys: str) -> dict[str, str | None]:
    """String values from a GGUF's metadata (one read: gguf parses the whole vocabulary)."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    return {key: None if key not in fields else str(fields[key].contents()) for key in keys}


def read_gguf_template(path: Path) -> str:
    """`tokenizer.chat_template` from a GGUF's metadata."""
    template = gguf_strings(path, CHAT_TEMPLATE_KEY)[CHAT_TEMPLATE_KEY]
    if template is None:
        raise ModelfileError(f"{path}: no {CHAT_TEMPLATE_KEY} in the GGUF metadata")
    return template


def render_jinja(template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render a chat template the way transformers and llama.cpp do (sandboxed Jinja)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


def analyse(template: str) -> ChatTemplate:
    """Check the template is ChatML and find the system prompt it adds when none is given."""
    if "<|im_start|>" not in template:
        raise ModelfileError(
            "the chat template is not ChatML; write the Modelfile TEMPLATE for it by hand"
        )
    probe = "\u2063probe\u2063"
    rendered = render_jinja(template, [{"role": "user", "content": probe}], True)
    head = rendered.split(f"<|im_start|>user\n{probe}", 1)[0]
    default = None
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        default = head.removeprefix("<|im_start|>system\n").removesuffix("<|im_end|>\n")
    elif head:
        raise ModelfileError(f"unexpected text before the first user turn: {head!r}")
    return ChatTemplate(template, default)


def go_template(chat: ChatTemplate) -> str:
    """A Go text/template rendering `.Messages` like the Jinja ChatML template."""
    default = ""
    if chat.default_system is not None:
        default = (
            '{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
            f"<|im_start|>system\n{chat.default_system}<|im_end|>\n"
            "{{ end }}"
        )
    return (
        default + "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )


def _quote(text: str) -> str:
    """A Modelfile string: triple quotes when it spans lines, else a JSON-style string."""
    if '"""' in text:
        raise ModelfileError(f'cannot quote {text[:40]!r}: it contains """')
    return f'"""{text}"""' if "\n" in text or '"' in text else json.dumps(text)


def render(
    gguf_path: Path,
    template: ChatTemplate,
    cfg: ModelfileStage,
    base_dir: Path,
    prompt_style: str | None = None,
) -> str:
    """The Modelfile text; FROM is relative to the Modelfile's folder when it can be."""
    try:
        source = "./" + gguf_path.resolve().relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        source = str(gguf_path.resolve())
    style = (
        f"# prompt style: {prompt_style} (GGUF metadata {PROMPT_STYLE_KEY}, read by the phone "
        "through `ollama show`)"
        if prompt_style
        else f"# prompt style: none in the GGUF ({PROMPT_STYLE_KEY}): the phone sends full prompts"
    )
    lines = [
        f"# ollama create NAME -f {base_dir.name}/Modelfile",
        style,
        f"FROM {source}",
        f"TEMPLATE {_quote(go_template(template))}",
        f"SYSTEM {_quote(cfg.system)}",
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in CHATML_STOPS),
        f"PARAMETER num_ctx {cfg.num_ctx}",
        f"PARAMETER temperature {cfg.temperature}",
        f"PARAMETER num_predict {cfg.num_predict}",
    ]
    return "\n".join(lines) + "\n"


def write(gguf_path: Path, cfg: ModelfileStage, dest: Path | None = None) -> Path:
    """Write `Modelfile` beside the GGUF (atomic) and return its path."""
    if not gguf_path.is_file():
        raise ModelfileError(f"no GGUF at {gguf_path}: run `python -m training export` first")
    dest = dest or gguf_path.parent / "Modelfile"
    found = gguf_strings(gguf_path, CHAT_TEMPLATE_KEY, PROMPT_STYLE_KEY)
    jinja = found[CHAT_TEMPLATE_KEY]
    if jinja is None:
        raise ModelfileError(f"{gguf_path}: no {CHAT_TEMPLATE_KEY} in the GGUF metadata")
    text = render(gguf_path, analyse(jinja), cfg, dest.parent, found[PROMPT_STYLE_KEY])
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)
    return dest
