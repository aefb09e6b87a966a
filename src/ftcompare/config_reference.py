"""The config reference, generated from the schema: `docs/config.md` (a table of keys per section) and
`docs/config.schema.json` (JSON Schema, for editors). Every key's text is its `Field(description=...)`, every
section's intro its class docstring; only the kinds registered by ftcompare's own modules are documented, so a
plugin (or a test) that registers one changes neither file.

    python -m ftcompare.config_reference docs/           # write docs/config.md and docs/config.schema.json
    python -m ftcompare.config_reference --check docs/   # exit 1 naming a file that is stale
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from ftcompare.config import StudyConfig
from ftcompare.models.methods import METHODS

PACKAGE = "ftcompare."
COMMAND = "python -m ftcompare.config_reference docs/"
MARKDOWN_FILE = "config.md"
SCHEMA_FILE = "config.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def is_builtin(cls: type) -> bool:
    """A class defined inside the ftcompare package (a plugin's or a test's is not)."""
    return cls.__module__.startswith(PACKAGE)


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_union(annotation: object) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _strip_annotated(annotation: object) -> object:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _section_of(annotation: object) -> tuple[list[type[BaseModel]], bool, bool]:
    """The config classes a field holds, whether it is a list of them, and whether they are a union picked by
    `kind` (of which only the built-in kinds count)."""
    annotation = _strip_annotated(annotation)
    is_list = get_origin(annotation) is list
    if is_list:
        annotation = _strip_annotated(get_args(annotation)[0])
    members = get_args(annotation) if _is_union(annotation) else (annotation,)
    models = [m for m in members if _is_model(m)]
    if len(models) > 1:
        return [m for m in models if is_builtin(m)], is_list, True
    return models, is_list, False


# ---- the classes and their fields --------------------------------------------------------------------------


def config_classes(root: type[BaseModel] = StudyConfig) -> list[type[BaseModel]]:
    """Every config class reachable from `root` (itself included; of a union of kinds, the built-in kinds), in
    the order a YAML is written."""
    found: list[type[BaseModel]] = []

    def visit(cls: type[BaseModel]) -> None:
        if cls in found:
            return
        found.append(cls)
        for field in cls.model_fields.values():
            for model in _section_of(field.annotation)[0]:
                visit(model)

    visit(root)
    return found


def missing_descriptions(classes: list[type[BaseModel]]) -> list[str]:
    """`Class.field` for every field of `classes` without a description (empty or blank counts as none)."""
    return [
        f"{cls.__qualname__}.{name}"
        for cls in classes
        for name, field in cls.model_fields.items()
        if not (field.description or "").strip()
    ]


def render_type(annotation: object) -> str:
    """A field's type as a reader writes it: `int`, `float | None`, `list[str]`, `"cosine" | "linear"`, `path`."""
    annotation = _strip_annotated(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(json.dumps(value) for value in args)
    if _is_union(annotation):
        return " | ".join(render_type(arg) for arg in args)
    if origin is list:
        return f"list[{render_type(args[0])}]"
    if origin is tuple:
        return "[" + ", ".join(render_type(arg) for arg in args) + "]"
    if annotation is Path:
        return "path"
    if _is_model(annotation):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def render_default(field: FieldInfo) -> str:
    """A field's default as YAML writes it (`required` where there is none). A section's default is the
    keys it sets beyond its own defaults (`{}`: the section with its defaults), its `kind` always shown."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json", exclude_defaults=True)
        if "kind" in type(value).model_fields:
            data = {"kind": value.kind, **data}
    else:
        data = to_jsonable_python(value)
    text = yaml.safe_dump(data, default_flow_style=True, width=1 << 20, sort_keys=False, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def constraints(field: FieldInfo) -> list[str]:
    """The field's declared bounds as a reader writes them: `> 0`, `≤ 1`, `at least 1 item`, `pattern ^…$`."""
    found = []
    for item in field.metadata:  # annotated_types' Gt, Ge, Lt, Le, MinLen, MaxLen; pydantic's own for a pattern
        for bound, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(item, bound, None) is not None:
                found.append(f"{symbol} {getattr(item, bound)}")
        for bound, words in (("min_length", "at least"), ("max_length", "at most")):
            if getattr(item, bound, None) is not None:
                count = getattr(item, bound)
                found.append(f"{words} {count} item" + ("s" if count != 1 else ""))
        if getattr(item, "pattern", None) is not None:
            found.append(f"pattern {item.pattern}")
    return found


def intro(cls: type) -> str:
    """The first paragraph of a class's own docstring, on one line ("" when it has none)."""
    doc = cls.__doc__
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()) if doc else ""


# ---- the sections, in the order a YAML is written ----------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One heading of the reference (`level`: its markdown heading level): a config class at `path`
    (`evaluation.forgetting`, `methods[]`), or a union of kinds (`cls` None, `kinds` its members), or one kind of
    a union (`kind` set)."""

    path: str
    level: int
    cls: type[BaseModel] | None = None
    kinds: tuple[type[BaseModel], ...] = ()
    kind: str | None = None
    text: str = ""

    @property
    def title(self) -> str:
        if self.kind is not None:
            label = _method_label(self.cls)
            return f"`kind: {self.kind}`" + (f" ({label})" if label else "")
        return f"`{self.path}`" if self.path else "Top-level keys"


def _method_label(cls: type[BaseModel] | None) -> str | None:
    return next((method.label for method in METHODS.values() if method.settings is cls), None)


def _sub_path(path: str, name: str, is_list: bool) -> str:
    return (f"{path}.{name}" if path else name) + ("[]" if is_list else "")


def sections(root: type[BaseModel] = StudyConfig) -> list[Section]:
    """The reference's sections: `root`'s keys, then each nested section depth-first in field order (a top-level
    key's section at `root`'s heading level, a section within it one below); a union of kinds gets a section of
    its own and one subsection per built-in kind (documented once: a later field holding the same union links
    to it)."""
    found: list[Section] = []
    unions: set[tuple] = set()

    def visit(cls: type[BaseModel], path: str, level: int, kind: str | None = None) -> None:
        found.append(Section(path, level, cls, kind=kind, text=intro(cls)))
        inner = level + 1 if path else level  # a top-level key's section sits beside the top-level keys
        for name, field in cls.model_fields.items():
            models, is_list, is_union = _section_of(field.annotation)
            if not models:
                continue
            sub = _sub_path(path, name, is_list)
            if not is_union:
                visit(models[0], sub, inner)
            elif tuple(models) not in unions:
                unions.add(tuple(models))
                found.append(Section(sub, inner, kinds=tuple(models), text=field.description or ""))
                for model in models:
                    visit(model, sub, inner + 1, kind=model.model_fields["kind"].default)

    visit(root, "", 2)
    return found


def _anchors(all_sections: list[Section]) -> dict[Section, str]:
    """Each section's anchor as GitHub makes it from its heading (lower case, punctuation dropped, spaces as
    hyphens, a repeated one numbered)."""
    anchors, seen = {}, {}
    for section in all_sections:
        slug = re.sub(r"[^\w\- ]", "", section.title.lower()).replace(" ", "-")
        anchors[section] = f"{slug}-{seen[slug]}" if slug in seen else slug
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _cell(text: str) -> str:
    """Text fit for a table cell: one line, its pipes escaped (inside code spans too, as GitHub needs)."""
    return " ".join(text.split()).replace("|", "\\|")


def _type_cell(field: FieldInfo, target: Section | None, anchors: dict[Section, str]) -> str:
    """The type column: a plain value's type in code, or a link to the section that documents the value."""
    _, is_list, is_union = _section_of(field.annotation)
    if target is None:
        text = f"`{_cell(render_type(field.annotation))}`"
    else:
        optional = type(None) in get_args(_strip_annotated(field.annotation))
        text = (
            ("list of mappings" if is_list else "mapping")
            + (" by `kind`" if is_union else "")
            + (" or `None`" if optional else "")
        )
    bounds = [f"pattern `{_cell(b.removeprefix('pattern '))}`" if b.startswith("pattern ") else b for b in constraints(field)]
    see = [f"see [{target.title}](#{anchors[target]})"] if target is not None else []
    return ", ".join([text, *bounds, *see])


def _target(section: Section, name: str, field: FieldInfo, all_sections: list[Section]) -> Section | None:
    """The section a field's value is documented in (None for a plain value)."""
    models, is_list, is_union = _section_of(field.annotation)
    if not models:
        return None
    if is_union:
        return next(s for s in all_sections if s.kinds == tuple(models))
    path = _sub_path(section.path, name, is_list)
    return next(s for s in all_sections if s.path == path and s.cls is models[0])


def _table(section: Section, all_sections: list[Section], anchors: dict[Section, str]) -> list[str]:
    """The section's table of keys: key | type | default | description, in the class's field order."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    fields = section.cls.model_fields
    for name, field in sorted(fields.items(), key=lambda item: item[0] != "kind"):  # `kind` first, as a YAML has it
        target = _target(section, name, field, all_sections)
        default = render_default(field)
        default = default if default == "required" else f"`{_cell(default)}`"
        rows.append(f"| `{name}` | {_type_cell(field, target, anchors)} | {default} | {_cell(field.description or '')} |")
    return rows


def markdown() -> str:
    """docs/config.md: every key of a study config, a table per section, from the schema."""
    all_sections = sections()
    anchors = _anchors(all_sections)
    lines = [
        "# Config reference",
        "",
        f"<!-- Generated from the schema by `{COMMAND}`; do not edit by hand. -->",
        "",
        "Every key of a study's YAML config, section by section in the order a config is written, generated from "
        "the schema (`src/ftcompare/config.py` and the task, suite and method classes it assembles) by "
        f"`{COMMAND}`: do not edit it by hand, edit the field's `description` and regenerate. A section picked by "
        "`kind` (`task`, `extra_suites[]`, `methods[]`) lists the built-in kinds; a plugin may add more (`plugins`). "
        "Defaults are written as YAML writes them: `required` means the key must be given, `null` is Python's "
        "`None` (a section set to `null` is off), and `{}` is a section with its own defaults. Relative paths "
        f"resolve against the config file's folder. The same schema as JSON Schema, for editors: [{SCHEMA_FILE}]"
        f"({SCHEMA_FILE}).",
        "",
        "Sections: " + ", ".join(f"[{s.title}](#{anchors[s]})" for s in all_sections if s.kind is None) + ".",
    ]
    for section in all_sections:
        lines += ["", f"{'#' * section.level} {section.title}"]
        if section.text:
            lines += ["", section.text]
        if section.cls is None:
            kinds = [s for s in all_sections if s.kind is not None and s.cls in section.kinds and s.path == section.path]
            links = ", ".join(f"[`{s.kind}`](#{anchors[s]})" for s in kinds)
            lines += ["", f"A mapping of one of these kinds, picked by its `kind` key: {links}."]
            continue
        lines += [""] + _table(section, all_sections, anchors)
    return "\n".join(lines) + "\n"


# ---- the JSON schema ---------------------------------------------------------------------------------------


def _builtin_annotation(annotation: object, rebuilt: dict) -> object:
    """`annotation` with every union's non-built-in config classes left out and every config class replaced
    by its built-in-only version (`rebuilt` memoizes those)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return Annotated[(_builtin_annotation(args[0], rebuilt), *annotation.__metadata__)]
    if _is_union(annotation):
        kept = tuple(_builtin_annotation(arg, rebuilt) for arg in args if not _is_model(arg) or is_builtin(arg))
        return Union[kept]
    if origin is list:
        return list[_builtin_annotation(args[0], rebuilt)]
    if _is_model(annotation):
        return _builtin_model(annotation, rebuilt)
    return annotation


def _builtin_model(cls: type[BaseModel], rebuilt: dict | None = None) -> type[BaseModel]:
    """`cls` itself when nothing it reaches was registered from outside the package; else a same-named
    subclass whose unions hold the built-in kinds only (its schema is then what `cls`'s was before)."""
    rebuilt = {} if rebuilt is None else rebuilt
    if cls not in rebuilt:
        rebuilt[cls] = cls
        changed = {}
        for name, field in cls.model_fields.items():
            annotation = _builtin_annotation(field.annotation, rebuilt)
            if annotation != field.annotation:
                changed[name] = (annotation, copy.copy(field))
        if changed:
            rebuilt[cls] = create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **changed)
    return rebuilt[cls]


def json_schema() -> dict:
    """docs/config.schema.json: StudyConfig's JSON schema (draft 2020-12), the unions of kinds as `oneOf` with a
    `discriminator` on `kind`, holding the built-in kinds only."""
    return {"$schema": JSON_SCHEMA_DIALECT, **_builtin_model(StudyConfig).model_json_schema()}


# ---- the files ---------------------------------------------------------------------------------------------


def rendered() -> dict[str, str]:
    """The generated files by name, as they are written."""
    return {
        MARKDOWN_FILE: markdown(),
        SCHEMA_FILE: json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
    }


def stale(folder: Path) -> list[Path]:
    """The generated files in `folder` that are missing or differ from what the schema gives now."""
    paths = {Path(folder) / name: text for name, text in rendered().items()}
    return [path for path, text in paths.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]


def write(folder: Path) -> list[Path]:
    """Write the generated files into `folder`; their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered().items():
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftcompare.config_reference",
        description=f"Write {MARKDOWN_FILE} and {SCHEMA_FILE}, generated from the config schema.",
    )
    parser.add_argument("folder", type=Path, help="where they go (the repository's docs/)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if either file is stale")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.folder)
        for path in out_of_date:
            print(f"{path} is stale: regenerate it with `{COMMAND}`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write(args.folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
