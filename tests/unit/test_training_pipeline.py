"""Training pipeline pieces that need no model: config, metrics, Modelfile, atomic export."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from payphone.llm.prompt_style import PROMPT_STYLE_KEY
from training import evaluate, export, modelfile
from training.base_model import BaseModelError, resolve
from training.config import CONFIG_DIR, ConfigError, ModelfileStage, load_config
from training.train import latest_checkpoint, spread, training_template

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- config -------------------------------------------------------------------------------------


def test_default_and_production_configs_load() -> None:
    cpu = load_config()
    prod = load_config(CONFIG_DIR / "production.toml")
    assert cpu.base == "SmolLM2-135M-Instruct"
    assert cpu.train.device == "cpu"
    assert cpu.export.quant == "Q8_0"
    assert prod.train.device == "cuda"
    assert prod.export.quant == "Q4_K_M"
    assert prod.train.max_steps == 0 and prod.train.epochs > 0


def test_bad_config_names_file_and_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nbatch_size = 0\nlearning_rat = 1e-4\n[export]\noutype = "f8"\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    text = str(info.value)
    assert f"{bad}: train.batch_size" in text
    assert f"{bad}: train.learning_rat" in text
    assert f"{bad}: export.outype" in text


def test_config_that_is_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(bad)


# --- base model and training helpers ---------------------------------------------------------


def test_resolve_base_kinds(tmp_path: Path) -> None:
    assert resolve("SmolLM2-135M-Instruct").kind == "gguf"
    assert resolve("Qwen/Qwen2.5-1.5B-Instruct").kind == "hub"
    folder = tmp_path / "hf"
    folder.mkdir()
    with pytest.raises(BaseModelError, match=r"no config\.json"):
        resolve(str(folder))
    (folder / "config.json").write_text("{}")
    assert resolve(str(folder)).kind == "dir"
    with pytest.raises(BaseModelError, match="no GGUF file"):
        resolve(str(tmp_path / "missing.gguf"))


def test_training_template_marks_only_assistant_turns() -> None:
    marked = training_template(SMOL_TEMPLATE)
    assert marked != SMOL_TEMPLATE
    assert marked.count("{% generation %}") == 1
    assert marked.startswith(SMOL_TEMPLATE[:200])  # patched in place, not replaced
    assert "You are a helpful AI assistant named SmolLM" in marked
    assert training_template(marked) == marked  # already marked: kept as is


def test_training_template_refuses_non_chatml() -> None:
    from training.train import TrainingError

    with pytest.raises(TrainingError, match="not ChatML"):
        training_template("{% for m in messages %}[INST] {{ m['content'] }}{% endfor %}")


def test_latest_checkpoint_and_spread(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 20, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    rows = list(range(10))
    assert spread(rows, 0) == rows
    assert spread(rows, 4) == [0, 2, 5, 7]


# --- eval (the rest: tests/unit/test_eval.py) -------------------------------------------------


def test_perplexity() -> None:
    assert evaluate.perplexity(None) is None
    assert evaluate.perplexity(0.0) == 1.0
    assert evaluate.perplexity(2.0) == pytest.approx(7.389, rel=1e-3)


def test_eval_configs_quick_is_a_subset_full_and_gpu_evaluate_everything() -> None:
    quick = load_config().eval
    full = load_config(CONFIG_DIR / "cpu.toml").eval
    gpu = load_config(CONFIG_DIR / "production.toml").eval
    assert min(quick.samples, full.samples, gpu.samples) >= 3
    assert quick.prompts_per_persona > 0  # a subset: minutes on 2 cores
    for every in (full, gpu):
        limits = (every.prompts_per_persona, every.break_attempts_per_persona)
        assert limits == (0, 0) and every.memory_probes_per_persona == 0  # every case
    assert full.quick().prompts_per_persona == 2


# --- Modelfile -----------------------------------------------------------------------------------


def test_chatml_default_system_is_found() -> None:
    chat = modelfile.analyse(SMOL_TEMPLATE)
    assert (
        chat.default_system
        == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    with pytest.raises(modelfile.ModelfileError, match="not ChatML"):
        modelfile.analyse("{{ messages[0]['content'] }}")


def test_modelfile_content(tmp_path: Path) -> None:
    gguf = tmp_path / "persona.Q8_0.gguf"
    cfg = ModelfileStage(num_ctx=1024, temperature=0.5, system="persona: Grandma Mae")
    text = modelfile.render(gguf, modelfile.analyse(SMOL_TEMPLATE), cfg, tmp_path)
    lines = text.splitlines()
    assert "FROM ./persona.Q8_0.gguf" in lines
    assert 'SYSTEM "persona: Grandma Mae"' in lines
    assert 'PARAMETER stop "<|im_start|>"' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert "PARAMETER num_ctx 1024" in lines
    assert "PARAMETER temperature 0.5" in lines
    assert 'TEMPLATE """{{- if or (not .Messages)' in text
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text


CONVERSATIONS = [
    [{"role": "user", "content": "hello?"}],
    [{"role": "system", "content": "persona: Operator"}, {"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "persona: Detective Jones"},
        {"role": "user", "content": "who's there"},
        {"role": "assistant", "content": "Jones. It's raining, kid."},
        {"role": "user", "content": 'a "quoted" {{ word }} & <tag>'},
    ],
]


@pytest.mark.skipif(shutil.which("go") is None, reason="`go` is not installed (golang-go)")
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["no-system", "system", "multi-turn"])
def test_go_template_renders_like_jinja(tmp_path: Path, messages: list[dict[str, str]]) -> None:
    """Go's text/template on the Modelfile TEMPLATE == the GGUF's Jinja, byte for byte."""
    template = modelfile.go_template(modelfile.analyse(SMOL_TEMPLATE))
    (tmp_path / "main.go").write_text(
        textwrap.dedent(
            """
            package main

            import ("encoding/json"; "os"; "text/template")

            type Message struct { Role string `json:"role"`; Content string `json:"content"` }

            func main() {
                src, _ := os.ReadFile(os.Args[1])
                var msgs []Message
                data, _ := os.ReadFile(os.Args[2])
                if err := json.Unmarshal(data, &msgs); err != nil { panic(err) }
                t := template.Must(template.New("t").Parse(string(src)))
                if err := t.Execute(os.Stdout, map[string]any{"Messages": msgs}); err != nil {
                    panic(err)
                }
            }
            """
        )
    )
    (tmp_path / "t.tmpl").write_text(template)
    (tmp_path / "m.json").write_text(json.dumps(messages))
    done = subprocess.run(
        ["go", "run", "main.go", "t.tmpl", "m.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={
            **__import__("os").environ,
            "GOCACHE": str(tmp_path / "gocache"),
            "GO111MODULE": "off",
        },
    )
    assert done.stdout == modelfile.render_jinja(SMOL_TEMPLATE, messages, True)


# --- atomic export ----------------------------------------------------------------------------

FAILING_CONVERTER = """
import sys
out = sys.argv[sys.argv.index("--outfile") + 1]
with open(out, "wb") as fh:
    fh.write(b"GGUF" + b"half a model" * 100)
    fh.flush()
sys.exit("killed mid-write")
"""


def test_failed_convert_leaves_previous_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llama_dir = tmp_path / "llama.cpp"
    llama_dir.mkdir()
    (llama_dir / export.CONVERT_SCRIPT).write_text(FAILING_CONVERTER)
    monkeypatch.setenv(export.LLAMA_CPP_ENV, str(llama_dir))
    dest = tmp_path / "model" / "persona.F16.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"the previous model")
    with pytest.raises(export.ExportError, match="killed mid-write"):
        export.convert(tmp_path, dest, "f16", "persona", export.llama_cpp_dir())
    assert dest.read_bytes() == b"the previous model"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["persona.F16.gguf"]


def test_failed_quantize_leaves_previous_model(tmp_path: Path) -> None:
    src = tmp_path / "broken.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 64)  # a truncated file: llama.cpp fails to read it
    dest = tmp_path / "persona.Q8_0.gguf"
    dest.write_bytes(b"the previous model")
    with pytest.raises(export.ExportError, match="llama_model_quantize"):
        export.quantize(src, dest, "Q8_0")
    assert dest.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf", "persona.Q8_0.gguf"]


def test_unknown_quant_type(tmp_path: Path) -> None:
    with pytest.raises(export.ExportError, match=r"export\.quant = 'Q3_X'"):
        export.quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q3_X")


def test_llama_cpp_dir_override_must_hold_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(export.LLAMA_CPP_ENV, str(tmp_path))
    with pytest.raises(export.ExportError, match=r"no convert_hf_to_gguf\.py"):
        export.llama_cpp_dir()


def test_smol_template_constant_is_the_demo_gguf_template() -> None:
    try:
        source = resolve("SmolLM2-135M-Instruct")
    except BaseModelError as exc:
        pytest.skip(str(exc))
    assert source.gguf is not None
    assert modelfile.read_gguf_template(source.gguf) == SMOL_TEMPLATE


# --- the prompt contract in the exported model -----------------------------------------------

COPYING_CONVERTER = """
import shutil, sys
out = sys.argv[sys.argv.index("--outfile") + 1]
shutil.copyfile({source!r}, out)  # stands in for the converted model (a real GGUF)
"""


def write_train_data(path: Path, systems: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {"messages": [{"role": "system", "content": s}, {"role": "user", "content": "hi"}]}
        )
        for s in systems
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_trained_prompt_style_is_read_from_the_training_data(tmp_path: Path) -> None:
    from payphone.personas.loader import load_personas

    mae, jones = list(load_personas())[:2]
    data = tmp_path / "train.jsonl"
    write_train_data(data, [mae.prompt_tag, jones.prompt_tag])
    assert export.trained_prompt_style(data) == "tag"
    write_train_data(data, [mae.prompt, jones.prompt, mae.prompt_tag])
    assert export.trained_prompt_style(data) == "full"
    write_train_data(data, ["You are a pirate."])
    with pytest.raises(export.ExportError, match="prompt style the model learnt is unknown"):
        export.trained_prompt_style(data)
    with pytest.raises(export.ExportError, match="python -m training data"):
        export.trained_prompt_style(tmp_path / "missing.jsonl")


@pytest.mark.models
@pytest.mark.slow
def test_export_writes_the_prompt_style_into_both_ggufs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key goes into the float GGUF and llama.cpp's quantizer carries it into the served
    one; llama.cpp reads it back."""
    from payphone.llm.factory import read_gguf_style
    from training.train import Paths

    source = resolve("SmolLM2-135M-Instruct").gguf
    assert source is not None
    llama_dir = tmp_path / "llama.cpp"
    llama_dir.mkdir()
    (llama_dir / export.CONVERT_SCRIPT).write_text(COPYING_CONVERTER.format(source=str(source)))
    monkeypatch.setenv(export.LLAMA_CPP_ENV, str(llama_dir))
    cfg = load_config()
    # the stand-in "float" file is already Q4_1: quantizing to Q4_1 copies every tensor
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"quant": "Q4_1"})})
    result = export.export_folder(cfg, Paths(tmp_path), tmp_path, "persona", prompt_style="tag")
    assert result.float_gguf is not None
    for path in (result.float_gguf, result.gguf):  # read back by llama.cpp, not by gguf
        assert read_gguf_style(path).style == "tag", path
    assert read_gguf_style(source).style is None  # the packaged model itself is untouched


def test_a_failed_tagging_leaves_the_previous_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.train import Paths

    llama_dir = tmp_path / "llama.cpp"
    llama_dir.mkdir()
    (llama_dir / export.CONVERT_SCRIPT).write_text(  # exits 0 with a file that is no GGUF
        "import sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "open(out, 'wb').write(b'GGUF' + b'x' * 64)\n"
    )
    monkeypatch.setenv(export.LLAMA_CPP_ENV, str(llama_dir))
    cfg = load_config()
    float_path, quant_path = export.gguf_names(cfg, Paths(tmp_path), "persona")
    quant_path.parent.mkdir(parents=True)
    for path in (float_path, quant_path):
        path.write_bytes(b"the previous model")
    with pytest.raises(export.ExportError, match=PROMPT_STYLE_KEY):
        export.export_folder(cfg, Paths(tmp_path), tmp_path, "persona", prompt_style="tag")
    assert float_path.read_bytes() == quant_path.read_bytes() == b"the previous model"
    assert sorted(p.name for p in quant_path.parent.iterdir()) == sorted(
        [float_path.name, quant_path.name]
    )


def test_modelfile_names_the_prompt_style(tmp_path: Path) -> None:
    chat, cfg = modelfile.analyse(SMOL_TEMPLATE), ModelfileStage()
    text = modelfile.render(tmp_path / "p.gguf", chat, cfg, tmp_path, prompt_style="tag")
    assert f"# prompt style: tag (GGUF metadata {PROMPT_STYLE_KEY}" in text.splitlines()[1]
    text = modelfile.render(tmp_path / "base.gguf", chat, cfg, tmp_path)
    assert "# prompt style: none in the GGUF" in text.splitlines()[1]
