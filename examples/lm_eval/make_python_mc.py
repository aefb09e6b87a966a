"""Writes python_mc.jsonl: multiple-choice questions on what short Python expressions evaluate to, for the offline
lm-evaluation-harness example (examples/lm_eval_cpu.yaml). Every answer is computed by evaluating the expression here,
and the wrong choices are values of nearby expressions, so the data are ftcompare's own (no benchmark copied).

    python examples/lm_eval/make_python_mc.py     # from the repository root
"""

import json
import random
from pathlib import Path

TEMPLATES = [
    "len({xs})",
    "sum({xs})",
    "max({xs})",
    "min({xs})",
    "sorted({xs})[1]",
    "{xs}[-1]",
    "{a} // {b}",
    "{a} % {b}",
    "{a} * {b} - {b}",
    "'{word}'.upper()",
    "'{word}'[::-1]",
    "len('{word}' * {b})",
    "list(range({b}))[-1]",
]
WORDS = ["py", "code", "lambda", "tensor", "banana", "module", "iterator", "generator", "dictionary"]


def question(rng: random.Random, template: str) -> dict:
    word = rng.choice(WORDS)
    values = {"xs": [rng.randint(1, 9) for _ in range(rng.randint(3, 5))], "a": rng.randint(10, 60), "b": rng.randint(2, 7)}
    values |= {"word": word}
    expression = template.format(**values)
    answer = eval(expression)  # noqa: S307 (expressions built here from the templates above)
    wrong = set()
    while len(wrong) < 3:  # every template's value changes with its inputs, so this ends
        other = {"xs": [rng.randint(1, 9) for _ in range(rng.randint(2, 7))], "a": values["a"] + rng.randint(-5, 5)}
        other |= {"b": rng.randint(2, 9), "word": rng.choice(WORDS)}
        candidate = eval(template.format(**other))  # noqa: S307
        if candidate != answer:
            wrong.add(repr(candidate))
    choices = sorted(wrong | {repr(answer)})
    rng.shuffle(choices)
    return {"question": f">>> {expression}", "choices": choices, "answer": choices.index(repr(answer))}


def main() -> None:
    rng = random.Random(0)
    rows = [question(rng, template) for template in TEMPLATES for _ in range(4)]
    path = Path(__file__).with_name("python_mc.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} questions to {path}")


if __name__ == "__main__":
    main()
