"""The generated config reference (docs/config.md, docs/config.schema.json): committed files match the schema,
every key is described, the JSON schema describes the example configs, and a plugin leaves both files alone."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from ftcompare.config import StudyConfig, load_config
from ftcompare.config_reference import (
    COMMAND,
    config_classes,
    is_builtin,
    json_schema,
    main,
    missing_descriptions,
    render_default,
    rendered,
    stale,
)
from ftcompare.data.suites import SUITES, TASKS
from ftcompare.models.methods import METHODS
from ftcompare.schema import Strict

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_committed_reference_is_what_the_schema_generates():
    out_of_date = [str(path.relative_to(ROOT)) for path in stale(DOCS)]
    assert not out_of_date, f"{', '.join(out_of_date)} stale: regenerate with `{COMMAND}` and commit the result"


def test_every_key_of_every_builtin_section_and_kind_is_described():
    classes = config_classes()
    assert {
        "GeneratedTask",
        "MbppTask",
        "QuixBugsSuite",
        "HumanEvalSuite",
        "FullSettings",
        "PissaSettings",
        "ForgettingConfig",
        "InterveneConfig",
    } <= {cls.__name__ for cls in classes}
    missing = missing_descriptions(classes)
    assert not missing, "fields without Field(description=...): " + ", ".join(missing)


def test_a_field_added_without_a_description_is_named():
    class Inner(Strict):
        described: int = Field(default=0, description="Has one.")
        bare: int = 0

    class Outer(Strict):
        inner: Inner | None = Field(default=None, description="A nested section.")
        blank: list[Inner] = Field(default=[], description="  ")

    assert config_classes(Outer) == [Outer, Inner]
    assert missing_descriptions(config_classes(Outer)) == [f"{Outer.__qualname__}.blank", f"{Inner.__qualname__}.bare"]


def test_a_plain_default_is_written_as_yaml_reads_it_back():
    for cls in config_classes():
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True) if not field.is_required() else None
            if field.is_required() or isinstance(default, BaseModel):
                continue
            expected = json.loads(json.dumps(default if not isinstance(default, tuple) else list(default), default=str))
            assert yaml.safe_load(render_default(field)) == expected, f"{cls.__name__}.{name}"


def _schema_problems(instance, schema: dict, defs: dict, where: str) -> list[str]:
    """Where `instance` (a parsed YAML value) breaks the parts of JSON Schema pydantic emits: $ref, oneOf by a
    discriminator, anyOf, type, enum/const, properties, additionalProperties, required, items, prefixItems."""
    if "$ref" in schema:
        return _schema_problems(instance, defs[schema["$ref"].removeprefix("#/$defs/")], defs, where)
    if "oneOf" in schema:
        kind = instance.get("kind") if isinstance(instance, dict) else None
        ref = schema["discriminator"]["mapping"].get(kind)
        return [f"{where}: no kind {kind!r}"] if ref is None else _schema_problems(instance, {"$ref": ref}, defs, where)
    if "anyOf" in schema:
        branches = [_schema_problems(instance, branch, defs, where) for branch in schema["anyOf"]]
        return [] if any(not problems for problems in branches) else min(branches, key=len)
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
        "integer": int,
        "number": (int, float),
    }
    if "type" in schema and (
        not isinstance(instance, types[schema["type"]])
        or (isinstance(instance, bool) and schema["type"] in ("integer", "number"))
    ):
        return [f"{where}: {instance!r} is not {schema['type']}"]
    if "enum" in schema and instance not in schema["enum"] or "const" in schema and instance != schema["const"]:
        return [f"{where}: {instance!r} is not one of {schema.get('enum', [schema.get('const')])}"]
    problems = []
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        problems += [
            f"{where}.{key}: not in the schema"
            for key in instance
            if key not in properties and schema.get("additionalProperties") is False
        ]
        problems += [f"{where}.{key}: required" for key in schema.get("required", []) if key not in instance]
        for key, value in instance.items():
            if key in properties:
                problems += _schema_problems(value, properties[key], defs, f"{where}.{key}")
    if isinstance(instance, list):
        for index, item in enumerate(instance):
            prefix = schema.get("prefixItems", [])
            item_schema = prefix[index] if index < len(prefix) else schema.get("items", {})
            problems += _schema_problems(item, item_schema, defs, f"{where}.{index}")
    return problems


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_the_json_schema_describes_every_example_config(example):
    load_config(example)  # the example is valid
    schema = json_schema()
    problems = _schema_problems(yaml.safe_load(example.read_text(encoding="utf-8")), schema, schema["$defs"], "")
    assert not problems, f"{example.name} against docs/config.schema.json: " + "; ".join(problems)
    assert _schema_problems({"experiment": "x", "methods": [{"kind": "nope"}]}, schema, schema["$defs"], "") == [
        ".methods.0: no kind 'nope'"
    ]


def test_the_json_schema_has_every_top_level_key_and_picks_kinds_by_a_discriminator():
    schema = json_schema()
    assert list(schema["properties"]) == list(StudyConfig.model_fields)
    assert schema["additionalProperties"] is False
    unions = {
        "task": (schema["properties"]["task"], TASKS.values()),
        "extra_suites": (schema["properties"]["extra_suites"]["items"], SUITES.values()),
        "methods": (schema["properties"]["methods"]["items"], [method.settings for method in METHODS.values()]),
    }
    for key, (union, classes) in unions.items():
        kinds = [cls.model_fields["kind"].default for cls in classes if is_builtin(cls)]
        assert union["discriminator"]["propertyName"] == "kind", key
        assert list(union["discriminator"]["mapping"]) == sorted(kinds), key
        assert [ref["$ref"] for ref in union["oneOf"]] == [union["discriminator"]["mapping"][kind] for kind in kinds], key


def test_a_kind_registered_from_outside_the_package_changes_neither_file():
    # in a fresh process: the registries are global, and this test's kinds must not reach the others
    script = (
        "import json, sys\n"
        "from ftcompare.config import import_plugins\n"
        "from ftcompare.config_reference import rendered\n"
        "from ftcompare.models.methods import METHODS\n"
        "import_plugins([sys.argv[1]], 'test')\n"
        "assert 'vera' in METHODS\n"
        "print(json.dumps(rendered()))\n"
    )
    plugin = str(ROOT / "tests" / "plugins" / "vera_and_doubling.py")
    result = subprocess.run([sys.executable, "-c", script, plugin], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == rendered()


def test_check_names_the_stale_file_and_writing_makes_it_current(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
    (tmp_path / "config.md").write_text("# hand-edited\n", encoding="utf-8")
    assert main(["--check", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "config.md is stale" in error and COMMAND in error and "config.schema.json" not in error
