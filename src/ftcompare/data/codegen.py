"""A generated MBPP-style code-synthesis task, deterministic from a seed.

Each problem is a natural-language spec in a docstring (HumanEval layout: signature, then spec)
whose completion is a one-line function body, checked by three asserts.

- In domain: integer and list arithmetic ("Return x times 3 plus 4.").
- Out of domain: strings, a type the fine-tuning data never shows. Half the families reuse the
  in-domain phrasings ("Return s times 3."), testing transfer; half are string idioms
  ("Return s reversed.") that only pre-training could have taught, testing what survived.

The combinations of (family, constants, argument name) used by the test split never occur in the
train split, so a test problem cannot be solved by recalling a training example; it needs the
mapping from words to code. Constants are single digits so that a small model can copy them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from ftcompare.data.problems import Problem, TaskSplits
from ftcompare.data.suites import TaskSettings, register_task

INT_ARGS = ("x", "n", "value")
LIST_ARGS = ("xs", "nums", "values")
STR_ARGS = ("s", "text", "word")
VERBS = ("compute", "get", "make", "find", "calc", "apply", "transform", "process", "build", "eval")
NOUNS = ("value", "result", "number", "total", "item", "score", "amount", "data", "output", "answer")
LETTERS = "abcdeilmnorst"


@dataclass(frozen=True)
class Family:
    """A problem family: a spec template and a body template over an argument and constants."""

    name: str
    arg_kind: str  # "int", "list" or "str"
    spec: str  # e.g. "Return {arg} plus {a}."
    body: str  # e.g. "return {arg} + {a}"
    n_constants: int  # how many of a, b the templates use
    constant_kind: str = "digit"  # "digit" or "letter"


IN_DOMAIN = (
    Family("add", "int", "Return {arg} plus {a}.", "return {arg} + {a}", 1),
    Family("sub", "int", "Return {arg} minus {a}.", "return {arg} - {a}", 1),
    Family("mul", "int", "Return {arg} times {a}.", "return {arg} * {a}", 1),
    Family("mod", "int", "Return the remainder of {arg} divided by {a}.", "return {arg} % {a}", 1),
    Family("max", "int", "Return the larger of {arg} and {a}.", "return max({arg}, {a})", 1),
    Family("min", "int", "Return the smaller of {arg} and {a}.", "return min({arg}, {a})", 1),
    Family("mul_add", "int", "Return {arg} times {a} plus {b}.", "return {arg} * {a} + {b}", 2),
    Family("add_mul", "int", "Return {arg} plus {a}, all times {b}.", "return ({arg} + {a}) * {b}", 2),
    Family("list_scale", "list", "Return a list of every element of {arg} times {a}.", "return [v * {a} for v in {arg}]", 1),
    Family("list_shift", "list", "Return a list of every element of {arg} plus {a}.", "return [v + {a} for v in {arg}]", 1),
    Family(
        "list_filter",
        "list",
        "Return a list of the elements of {arg} greater than {a}.",
        "return [v for v in {arg} if v > {a}]",
        1,
    ),
    Family(
        "list_count",
        "list",
        "Return how many elements of {arg} are greater than {a}.",
        "return sum(1 for v in {arg} if v > {a})",
        1,
    ),
    Family("list_sum", "list", "Return the sum of the elements of {arg}.", "return sum({arg})", 0),
    Family("list_max", "list", "Return the largest element of {arg}.", "return max({arg})", 0),
    Family("list_len", "list", "Return the number of elements of {arg}.", "return len({arg})", 0),
)

OUT_OF_DOMAIN = (
    # the same phrasings as in domain, applied to strings: transfer of what fine-tuning taught
    Family("str_times", "str", "Return {arg} times {a}.", "return {arg} * {a}", 1),
    Family("str_len", "str", "Return the number of elements of {arg}.", "return len({arg})", 0),
    Family("str_max", "str", "Return the largest element of {arg}.", "return max({arg})", 0),
    Family(
        "str_filter",
        "str",
        "Return a list of the elements of {arg} greater than '{a}'.",
        "return [v for v in {arg} if v > '{a}']",
        1,
        "letter",
    ),
    # string idioms fine-tuning never shows: what the base knew from pre-training
    Family("str_upper", "str", "Return {arg} in upper case.", "return {arg}.upper()", 0),
    Family("str_reverse", "str", "Return {arg} reversed.", "return {arg}[::-1]", 0),
    Family("str_prefix", "str", "Return the first {a} characters of {arg}.", "return {arg}[:{a}]", 1),
    Family(
        "str_count", "str", "Return how many times the letter '{a}' occurs in {arg}.", "return {arg}.count('{a}')", 1, "letter"
    ),
)

_ARGS_BY_KIND = {"int": INT_ARGS, "list": LIST_ARGS, "str": STR_ARGS}
FAMILIES = {family.name: family for family in IN_DOMAIN + OUT_OF_DOMAIN}
FAMILY_NAMES = tuple(FAMILIES)


def ood_families(families: list[str] | None) -> tuple[Family, ...]:
    """The out-of-domain (string) families a task leaves out of its training families."""
    chosen = set(families or ())
    return tuple(family for family in OUT_OF_DOMAIN if family.name not in chosen)


def _constants(family: Family) -> list[tuple]:
    pool = list(range(1, 10)) if family.constant_kind == "digit" else list(LETTERS)
    if family.n_constants == 0:
        return [()]
    if family.n_constants == 1:
        return [(a,) for a in pool]
    return [(a, b) for a in pool for b in pool if a != b]


def problem_keys(families: tuple[Family, ...]) -> list[tuple[Family, str, tuple]]:
    """Every (family, argument name, constants) combination: the unit kept apart between splits."""
    return [(f, arg, consts) for f in families for arg in _ARGS_BY_KIND[f.arg_kind] for consts in _constants(f)]


def _random_input(kind: str, rng: random.Random) -> object:
    if kind == "int":
        return rng.randint(-20, 40)
    if kind == "list":
        return [rng.randint(-9, 20) for _ in range(rng.randint(1, 6))]
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 10)))


def _reference(body: str, name: str, arg: str) -> Callable:
    namespace: dict = {}
    exec(f"def {name}({arg}):\n    {body}\n", namespace)  # the templates above are ours, not model output
    return namespace[name]


def make_problem(key: tuple[Family, str, tuple], rng: random.Random, task_id: str) -> Problem:
    """Render one problem from its key, drawing the function name and test inputs from `rng`. Its tests,
    `assert NAME(VALUE) == EXPECTED` with literal values, are compared on plain data by the sandbox."""
    family, arg, consts = key
    values = dict(zip("ab", consts), arg=arg)
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    spec = family.spec.format(**values)
    body = family.body.format(**values)
    reference = _reference(body, name, arg)
    tested = [_random_input(family.arg_kind, rng) for _ in range(3)]
    prompt = f'def {name}({arg}):\n    """{spec}"""\n'
    tests = tuple(f"assert {name}({value!r}) == {reference(value)!r}" for value in tested)
    return Problem(
        task_id=task_id,
        prompt=prompt,
        completion=f"    {body}\n",
        tests=tests,
        entry_point=name,
        family=family.name,
        code_prefix=prompt,
    )


def generate_task(
    *, seed: int, n_train: int, n_test: int, n_ood: int, families: list[str] | None = None, test_key_fraction: float = 0.2
) -> TaskSplits:
    """Train / in-domain test / out-of-domain test splits, deterministic from `seed`.

    `families` picks the in-domain families by name (default: the 15 integer and list families); the
    string families not picked form the out-of-domain suite, which is left out when none remain.

    Within each in-domain family a fraction of the keys (at least one) is reserved for the test split.
    Problems draw a family uniformly, then a key of that family from their split's pool, with a fresh
    function name and fresh test inputs each time.
    """
    rng = random.Random(seed)
    train_pool: dict[str, list] = {}
    test_pool: dict[str, list] = {}
    in_domain = tuple(FAMILIES[name] for name in families) if families else IN_DOMAIN
    for family in in_domain:
        keys = problem_keys((family,))
        rng.shuffle(keys)
        n_held = max(1, round(len(keys) * test_key_fraction))
        test_pool[family.name], train_pool[family.name] = keys[:n_held], keys[n_held:]
    ood_pool = {family.name: problem_keys((family,)) for family in ood_families(families)}

    def draw(pool: dict[str, list], count: int, prefix: str) -> tuple[Problem, ...]:
        names = sorted(pool)
        # evaluation splits cycle through the families so each is equally represented
        chosen = [pool[names[i % len(names)] if prefix != "train" else rng.choice(names)] for i in range(count)]
        return tuple(make_problem(rng.choice(keys), rng, f"{prefix}/{i}") for i, keys in enumerate(chosen))

    train = draw(train_pool, n_train, "train")  # drawn in this order so that a seed keeps its task
    suites = {"test": draw(test_pool, n_test, "test")}
    if n_ood and ood_pool:
        suites["ood"] = draw(ood_pool, n_ood, "ood")
    return TaskSplits(name="generated", train=train, suites=suites)


@register_task
class GeneratedTask(TaskSettings):
    """The built-in MBPP-style task: small Python functions of 15 integer and list families (in domain) and
    string families (out of domain), generated from a seed; nothing is downloaded."""

    kind: Literal["generated"] = Field(default="generated", description="Selects this task: the built-in generated problems.")
    seed: int = Field(default=0, description="Seed of the generated problems (the same seed, the same task).")
    n_train: int = Field(default=2000, gt=0, description="Training problems.")
    n_test: int = Field(default=100, gt=0, description="In-domain test problems (the suite `test`).")
    n_ood: int = Field(default=100, ge=0, description="Out-of-domain test problems (the suite `ood`; 0: none).")
    families: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Fine-tune and test on these families only (None: the 15 integer and list families); string "
        "families listed here become in domain and leave the out-of-domain suite.",
    )

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: list[str] | None) -> list[str] | None:
        unknown = [name for name in value or () if name not in FAMILY_NAMES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILY_NAMES)}")
        return value

    def suite_names(self) -> list[str]:
        return ["test", "ood"] if self.n_ood and ood_families(self.families) else ["test"]

    def load(self, tokenizer=None) -> TaskSplits:
        return generate_task(seed=self.seed, n_train=self.n_train, n_test=self.n_test, n_ood=self.n_ood, families=self.families)

    def counts(self) -> tuple[int, dict[str, int]]:
        return self.n_train, {name: self.n_test if name == "test" else self.n_ood for name in self.suite_names()}
