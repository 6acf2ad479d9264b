"""Personas as data: the shipped four, user overrides, and broken files that name the field."""

from __future__ import annotations

import shutil
from pathlib import Path

from payphone.personas.loader import SHIPPED_DIR, load_personas
from tests.helpers import run_module


def test_the_four_default_personas() -> None:
    book = load_personas()
    assert book.errors == []
    names = {key: p.name for key, p in book.personas.items()}
    assert names == {
        "0": "The Operator",
        "1": "Detective Jones",
        "2": "Grandma Mae",
        "3": "COMP-U-TRON 3000",
    }
    assert book.by_number("5550102").name == "Grandma Mae"  # type: ignore[union-attr]
    assert book.by_number("0103").name == "COMP-U-TRON 3000"  # type: ignore[union-attr]
    assert book.by_number("5559999") is None
    assert book.operator.key == "0"
    assert len({p.voice_spec for p in book}) == 4  # each sounds different


def test_a_broken_file_names_file_and_field_and_the_others_load(tmp_path: Path) -> None:
    text = (SHIPPED_DIR / "grandma_mae.toml").read_text(encoding="utf-8")
    (tmp_path / "grandma_mae.toml").write_text(text.replace('key = "2"', 'key = "22"'), "utf-8")
    (tmp_path / "broken.toml").write_text("name = [unclosed", "utf-8")
    book = load_personas(tmp_path)
    assert sorted(book.personas) == ["0", "1", "3"]
    assert len(book.errors) == 2
    key_error = next(e for e in book.errors if "grandma_mae.toml" in e)
    assert "field key" in key_error
    assert any("broken.toml" in e and "not valid TOML" in e for e in book.errors)


def test_user_directory_adds_and_replaces(tmp_path: Path) -> None:
    shutil.copy(SHIPPED_DIR / "operator.toml", tmp_path / "operator.toml")
    text = (tmp_path / "operator.toml").read_text(encoding="utf-8")
    (tmp_path / "operator.toml").write_text(text.replace("The Operator", "Night Operator"), "utf-8")
    extra = (SHIPPED_DIR / "detective_jones.toml").read_text(encoding="utf-8")
    extra = extra.replace('key = "1"', 'key = "4"').replace("555-0101", "555-0104")
    junior = extra.replace("Detective Jones", "Jones Jr.")
    (tmp_path / "jones_junior.toml").write_text(junior, "utf-8")
    book = load_personas(tmp_path)
    assert book.errors == []
    assert book.personas["0"].name == "Night Operator"
    assert book.personas["4"].name == "Jones Jr."


def test_duplicate_key_is_reported(tmp_path: Path) -> None:
    text = (SHIPPED_DIR / "detective_jones.toml").read_text(encoding="utf-8")
    (tmp_path / "copycat.toml").write_text(text, "utf-8")
    book = load_personas(tmp_path)
    assert any("copycat.toml" in e and "already used" in e for e in book.errors)


def test_personas_command_lists_them(tmp_path: Path) -> None:
    result = run_module("payphone", "personas")
    assert result.returncode == 0, result.stderr
    for text in ("The Operator", "555-0101", "Grandma Mae", "COMP-U-TRON 3000"):
        assert text in result.stdout


def test_personas_command_reports_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('name = "x"\n', "utf-8")
    result = run_module("payphone", "personas", env={"PAYPHONE_PERSONAS__USER_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "bad.toml" in result.stderr
    assert "The Operator" in result.stdout
