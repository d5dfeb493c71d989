"""Hostile tests for the record tasks (batch, classify, extract) on the FakeEngine.

Each of these found a bug (a hostile review): a literal {{text}} in -p, kept fields named
like result fields, --resume in another output format, a $ref loop in a schema, and
labels files with non-text labels, repeated keys or aliases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.fake import FakeEngine


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # conftest isolates the dirs


def invoke(engine: FakeEngine, *args: str) -> Any:
    runner = CliRunner()
    return runner.invoke(app, list(args), obj=AppState(engine_factory=lambda s: engine))


def cli(engine: FakeEngine, *args: str) -> Any:
    result = invoke(engine, *args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def write(name: str, data: str) -> str:
    Path(name).write_text(data, encoding="utf-8")
    return name


def jsonl(*objs: dict[str, Any]) -> str:
    return "".join(json.dumps(obj) + "\n" for obj in objs)


# 1. batch -p with a literal "{{text}}" never inserts the record's text

def test_batch_prompt_with_literal_braced_text_still_gets_the_record() -> None:
    write("in.txt", "alpha\nbeta\n")
    engine = FakeEngine()
    result = cli(engine, "batch", "-p", "Wrap the sentence in {{text}} tags", "in.txt")
    assert result.exit_code == 0
    users = [[m.content for m in r.messages if m.role == "user"][-1] for r in engine.requests]
    # "{{text}}" is a literal brace pair, not the {text} placeholder: the text must be added
    assert "alpha" in users[0] and "beta" in users[1], users


# 2. --keep-fields: an input field "output" replaces the task's answer in text output

@pytest.mark.parametrize("command", [
    ["classify", "--labels", "pos,neg"],
    ["extract", "--fields", "name"],
])
def test_keep_fields_input_output_field_does_not_hide_answer_in_text(command: list[str]) -> None:
    write("k.jsonl", jsonl({"id": "1", "text": "hello", "output": "INPUT-OUTPUT"}))
    engine = FakeEngine(['{"name": "Bob"}'])
    result = cli(engine, *command, "k.jsonl", "--keep-fields", "--output-format", "text")
    assert result.exit_code == 0
    assert result.stdout.strip() != "INPUT-OUTPUT"  # the label / data, not the input's field


# 3. --keep-fields: an input field "truncated" claims a truncation that never happened

def test_keep_fields_input_truncated_field_is_not_a_truncation() -> None:
    write("t.jsonl", jsonl({"id": "1", "text": "hello", "truncated": True}))
    result = cli(FakeEngine(), "classify", "--labels", "pos,neg", "t.jsonl", "--keep-fields")
    assert result.exit_code == 0
    out = json.loads(result.stdout.splitlines()[0])
    assert "truncated" not in result.stderr  # the summary counts no truncation ...
    assert out.get("truncated") is not True  # ... but the record says it was cut


# 4./5. --resume with another --output-format than the file was written in

def test_resume_jsonl_output_with_csv_format_does_not_corrupt_it() -> None:
    write("in.txt", "alpha\nbeta\ngamma\n")
    cli(FakeEngine(), "classify", "--labels", "pos,neg", "in.txt", "-o", "out.jsonl",
        "--limit", "2")
    before = Path("out.jsonl").read_text(encoding="utf-8")
    result = cli(FakeEngine(), "classify", "--labels", "pos,neg", "in.txt", "-o", "out.jsonl",
                 "--resume", "--output-format", "csv")
    after = Path("out.jsonl").read_text(encoding="utf-8")
    assert result.exit_code == 2 and after == before, (result.exit_code, after)
    assert "cannot resume out.jsonl as CSV: its first line is not a CSV header with an id " \
        "column (it looks like JSONL); nothing was changed" in result.stderr


def test_resume_csv_output_with_jsonl_format_keeps_its_rows() -> None:
    write("in.txt", "alpha\nbeta\ngamma\n")
    cli(FakeEngine(), "classify", "--labels", "pos,neg", "in.txt", "-o", "out.csv",
        "--limit", "2", "--output-format", "csv")
    before = Path("out.csv").read_text(encoding="utf-8")
    assert before.count("\n") == 3
    result = cli(FakeEngine(), "classify", "--labels", "pos,neg", "in.txt", "-o", "out.csv",
                 "--resume")
    after = Path("out.csv").read_text(encoding="utf-8")
    assert result.exit_code == 2 and after == before, after
    assert "its first line is not a JSON record (it looks like CSV or TSV)" in result.stderr
    done = cli(FakeEngine(), "classify", "--labels", "pos,neg", "in.txt", "-o", "out.csv",
               "--resume", "--output-format", "csv")  # the format it was written in
    assert done.exit_code == 0 and Path("out.csv").read_text().count("\n") == 4


# 6. a valid but self-referencing schema crashes the run with a RecursionError

def test_extract_self_referencing_schema_does_not_crash() -> None:
    write("in.txt", "alpha\n")
    write("s.json", json.dumps({"$ref": "#"}))
    result = invoke(FakeEngine(['{"a": 1}']), "extract", "--schema", "s.json", "in.txt")
    assert not isinstance(result.exception, RecursionError), "traceback instead of an error"
    assert result.exit_code == 2 and "refers to itself without end" in result.stderr


# 7. --labels-file: a non-scalar label becomes its Python repr (and a YAML alias bomb blows up)

def test_labels_file_nested_list_item_is_a_usage_error() -> None:
    write("in.txt", "alpha\n")
    write("labels.yaml", "- [a, b]\n- {x: y}\n")
    result = cli(FakeEngine(), "classify", "--labels-file", "labels.yaml", "in.txt")
    assert "['a', 'b']" not in result.stdout
    assert result.exit_code == 2


# 8. --labels-file: a label given twice as a YAML key is silently merged

def test_labels_file_duplicate_key_is_listed_twice() -> None:
    write("in.txt", "alpha\n")
    write("labels.yaml", "pos: good things\npos: bad things\nneg: other\n")
    result = cli(FakeEngine(), "classify", "--labels-file", "labels.yaml", "in.txt")
    assert result.exit_code == 2  # as "Pos"/"pos" is: label 'pos' is listed twice
    assert "twice" in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("pos: a\npos: b\n", "the key 'pos' is given twice (line 2)"),
    ("a: &x [lol, lol]\nb: [*x, *x]\n", "aliases (*name) are not allowed here (line 2)"),
    ("k: [1, 2\n", "not valid YAML: expected ',' or ']'"),
])
def test_user_yaml_refuses_repeated_keys_and_aliases(text: str, message: str) -> None:
    import yaml

    from termlm import yamlfile

    for text_only in (False, True):
        with pytest.raises(yaml.YAMLError) as caught:
            yamlfile.load(text, text_only=text_only)
        assert yamlfile.reason(caught.value).startswith(message)


def test_a_template_with_a_repeated_key_is_one_line() -> None:
    folder = Path("config") / "prompts"
    folder.mkdir(parents=True)
    (folder / "twice.yaml").write_text("description: d\nuser: '{text}'\nuser: 'again {text}'\n")
    result = invoke(FakeEngine(), "batch", "--template", "twice", "in.txt")
    assert result.exit_code == 1
    assert "template 'twice'" in result.stderr and "the key 'user' is given twice (line 3)" \
        in result.stderr


def test_resume_looks_past_blank_lines_for_the_format() -> None:
    write("in.txt", "alpha\nbeta\n")
    write("out.jsonl", '\n{"id": "1", "label": "pos", "confidence": 1.0, "scores": {}}\n')
    result = cli(FakeEngine(), "classify", "--labels", "pos,neg", "in.txt", "-o", "out.jsonl",
                 "--resume")
    assert result.exit_code == 0, result.stderr
    ids = [json.loads(x)["id"] for x in Path("out.jsonl").read_text().splitlines() if x]
    assert ids == ["1", "2"]
