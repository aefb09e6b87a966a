"""Build `instructions.jsonl`, the small categorized instruction set of `examples/instructions_judged_cpu.yaml`:
5 categories × 4 items, each with a reference answer, from material on this machine only.

- math, code, translation, generation: from ftcompare's own generated task (`ftcompare.data.codegen`, the
  project's code and licence): the arithmetic its specs describe, the function a spec asks for, a Python
  expression put into the spec's words, a one-line docstring for a string idiom.
- closed_qa: what a standard-library function does, the reference being the first line of its docstring in
  this Python (the Python Software Foundation License; docstrings vary a little between Python versions).

Deterministic: `python examples/instructions/make_instructions.py` rewrites the same file on the same Python.
"""

import importlib
import inspect
import json
import random
from pathlib import Path

from ftcompare.data.codegen import FAMILIES

OUT = Path(__file__).with_name("instructions.jsonl")
STDLIB_FUNCTIONS = ("os.path.basename", "os.path.splitext", "shutil.copyfile", "textwrap.dedent")
ARITHMETIC = ("add", "mul", "mul_add", "add_mul")
FUNCTIONS = ("sub", "max", "list_sum", "list_scale")
EXPRESSIONS = ("mul_add", "mod", "min", "add_mul")
IDIOMS = ("str_upper", "str_reverse", "str_prefix", "str_count")


def spec(name: str, arg: str, constants: dict) -> tuple[str, str]:
    family = FAMILIES[name]
    return family.spec.format(arg=arg, **constants), family.body.format(arg=arg, **constants)


def build() -> list[dict]:
    rng = random.Random(0)
    items = []
    for name in ARITHMETIC:
        a, b, x = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        words, body = spec(name, str(x), {"a": a, "b": b})
        question = words.removeprefix("Return ").rstrip(".")
        value = eval(body.removeprefix("return "), {"__builtins__": {}})  # our own template, filled with digits
        items.append({"category": "math", "instruction": f"What is {question}? Answer with the number.", "reference": str(value)})
    for name in FUNCTIONS:
        arg = "xs" if FAMILIES[name].arg_kind == "list" else "x"
        words, body = spec(name, arg, {"a": rng.randint(2, 9), "b": rng.randint(2, 9)})
        items.append(
            {
                "category": "code",
                "instruction": f"Write a Python function f({arg}). {words}",
                "reference": f"def f({arg}):\n    {body}",
            }
        )
    for name in EXPRESSIONS:
        words, body = spec(name, "n", {"a": rng.randint(2, 9), "b": rng.randint(2, 9)})
        items.append(
            {
                "category": "translation",
                "instruction": f"Translate this Python expression into plain English: {body.removeprefix('return ')}",
                "reference": words.removeprefix("Return ").rstrip("."),
            }
        )
    for name in IDIOMS:
        constant = rng.choice("abcdeilmnorst") if FAMILIES[name].constant_kind == "letter" else rng.randint(2, 9)
        words, body = spec(name, "s", {"a": constant})
        items.append(
            {
                "category": "generation",
                "instruction": f"Write a one-line docstring for this Python function:\n\ndef f(s):\n    {body}",
                "reference": words,
            }
        )
    for dotted in STDLIB_FUNCTIONS:
        module, name = dotted.rsplit(".", 1)
        doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
        items.append(
            {
                "category": "closed_qa",
                "instruction": f"What does the Python standard library function {dotted} do? Answer in one sentence.",
                "reference": doc.strip().splitlines()[0],
            }
        )
    return [{"id": f"{item['category']}-{i % 4 + 1}", **item} for i, item in enumerate(items)]


if __name__ == "__main__":
    OUT.write_text("".join(json.dumps(item) + "\n" for item in build()), encoding="utf-8")
    print(f"{OUT}: {len(build())} instructions")
