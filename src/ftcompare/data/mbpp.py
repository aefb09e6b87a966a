"""MBPP, Mostly Basic Python Problems (Austin et al. 2021): records, standard splits, prompt formats, and
EvalPlus inputs as extra tests; a record becomes a `Problem` for fine-tuning and for scoring.

Data: the original `mbpp.jsonl` (974 problems, source "mbpp") or `sanitized-mbpp.json` (427 hand-verified
ones, source "mbpp-sanitized"), from a local file or from the Hugging Face hub (`datasets`, optional).
Splits are the standard task_id ranges (MBPP_SPLITS); the sanitized subset keeps the ranges, with fewer ids.

Prompt formats (PROMPT_FORMATS), and where the model's completion stops (stop_sequences):

- "austin3shot": the 3-shot prompt of Austin et al., byte for byte as lm-evaluation-harness builds it for
  its `mbpp` task (`lm_eval/tasks/mbpp/mbpp.yaml` as fixed for its issue #2644):
  doc_to_text "You are an expert Python programmer, and here is your task: {{text}} Your code should pass
  these tests:\\n\\n{{test_list[0]}}\\n{{test_list[1]}}\\n{{test_list[2]}}\\n[BEGIN]\\n", few-shot target
  "{{code}}\\n[DONE]", target_delimiter "", the default fewshot_delimiter "\\n\\n" (`lm_eval/api/task.py`,
  build_qa_turn), the first_n sampler over `utils.list_fewshot_samples` (tasks 2, 3, 4 of the prompt
  split, their code with the dataset's CRLF line ends, which render_prompt restores for full-set few-shot
  records), generation until "[DONE]". Before that fix the query
  ended at "[BEGIN]" with target_delimiter "\\n": the same few-shot text, one newline less at the end.
  (bigcode-evaluation-harness's `mbpp` task uses another, zero-shot prompt: a docstring with the text and
  the first test.)
- "zeroshot" (ours): the text, the first three tests (as austin3shot shows them), "Write the Python
  function.", a newline. The answer ends at end of sequence or at a top-level assert, print or
  `if __name__` (tests and demos that would run with the code; bigcode-evaluation-harness stops there too).
- "chat": the same instruction as one user message through the tokenizer's chat template, with the
  generation prompt; the reply ends at end of turn.

The code in a completion of any format is what `ftcompare.evaluate.extraction.extract_code` (style "auto")
finds: the span before "[DONE]", a fenced block, or the code in the text.
"""

from __future__ import annotations

import ast
import builtins
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ftcompare.data.problems import Problem, SuiteInfo, TaskSplits, load_jsonl_problems, readable_problems
from ftcompare.data.suites import TaskSettings, register_benchmark, register_task
from ftcompare.schema import existing_file

MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}
HUB_DATASET = "google-research-datasets/mbpp"  # configs "full" and "sanitized"
PROMPT_FORMATS = ("austin3shot", "zeroshot", "chat")
AUSTIN_FEW_SHOT_IDS = (2, 3, 4)  # lm-eval's few-shot samples, in this order

_FULL_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
_SANITIZED_FIELDS = ("task_id", "prompt", "code", "test_list", "test_imports")
_STOP_SEQUENCES = {"austin3shot": ("[DONE]",), "zeroshot": ("\nassert", "\nprint(", "\nif __name__"), "chat": ()}


@dataclass(frozen=True)
class MbppRecord:
    """One MBPP problem. `code` and `test_setup_code` have "\\n" line ends. For the sanitized subset, `text`
    is its `prompt` field, `test_setup_code` its `test_imports` joined by newlines, and
    `challenge_test_list` is empty. `source` is "mbpp" or "mbpp-sanitized"."""

    task_id: int
    text: str
    code: str
    test_list: tuple[str, ...]
    test_setup_code: str
    challenge_test_list: tuple[str, ...]
    source: str


def load_mbpp(path: Path | None = None, *, sanitized: bool = False) -> list[MbppRecord]:
    """MBPP's records sorted by task_id: from `path` (`mbpp.jsonl`, JSON lines, or `sanitized-mbpp.json`, a
    JSON array; `sanitized` says which), or, with no path, from the Hugging Face hub (needs `datasets`)."""
    source = "mbpp-sanitized" if sanitized else "mbpp"
    if path is None:
        rows = [(f"{HUB_DATASET} row {index}", row) for index, row in enumerate(_hub_rows(sanitized))]
    else:
        rows = _file_rows(Path(path))
    records = sorted((_to_record(row, source, where) for where, row in rows), key=lambda record: record.task_id)
    ids = [record.task_id for record in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path or HUB_DATASET}: duplicate task_id values")
    return records


def split(records: Sequence[MbppRecord], name: str) -> list[MbppRecord]:
    """The records of one standard split ("prompt", "test", "validation", "train"), by task_id."""
    if name not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {name!r}; choose from {sorted(MBPP_SPLITS)}")
    return [record for record in records if record.task_id in MBPP_SPLITS[name]]


def render_prompt(record: MbppRecord, fmt: str, *, few_shot: Sequence[MbppRecord] = (), tokenizer=None) -> str:
    """The prompt text for `record` in format `fmt` (see the module docstring). "austin3shot" needs its
    few-shot records (AUSTIN_FEW_SHOT_IDS, in that order, for the standard prompt); "chat" needs a
    tokenizer with a chat template."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"unknown MBPP prompt format {fmt!r}; choose from {PROMPT_FORMATS}")
    if fmt == "austin3shot":
        if not few_shot:
            raise ValueError("austin3shot needs few_shot records: tasks 2, 3, 4 of the prompt split")
        if any(shot.task_id == record.task_id and shot.source == record.source for shot in few_shot):
            raise ValueError(f"task {record.task_id} is among its own few-shot examples")
        shots = "".join(_austin_query(shot) + _as_in_dataset(shot) + "\n[DONE]" + "\n\n" for shot in few_shot)
        return shots + _austin_query(record)
    if few_shot:
        raise ValueError(f"the {fmt} format takes no few-shot examples")
    if fmt == "zeroshot":
        return _instruction(record) + "\n"
    if tokenizer is None:
        raise ValueError("the chat format needs a tokenizer with a chat template")
    messages = [{"role": "user", "content": _instruction(record)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_sequences(fmt: str) -> tuple[str, ...]:
    """Strings that end the model's completion in format `fmt` (end of sequence always does)."""
    if fmt not in _STOP_SEQUENCES:
        raise ValueError(f"unknown MBPP prompt format {fmt!r}; choose from {PROMPT_FORMATS}")
    return _STOP_SEQUENCES[fmt]


def training_completion(code: str, fmt: str) -> str:
    """The fine-tuning target after a prompt in `fmt`: the code as the format's answer would carry it,
    so the model also learns where to stop ("[DONE]" after Austin prompts, a closed fence in chat)."""
    if fmt == "austin3shot":
        return code + "\n[DONE]"
    if fmt == "chat":
        return f"```python\n{code}\n```"
    return code + "\n"


def called_function(assertion: str) -> str:
    """The function an assert statement tests: the first name it calls, in source order, that is not a
    builtin (`assert set(f(x)) == {1}` tests f), else the first name it calls (MBPP task 126 defines `sum`)."""
    try:
        tree = ast.parse(assertion.strip())
    except SyntaxError as error:
        raise ValueError(f"not Python: {assertion!r} ({error.msg})") from None
    calls = sorted(
        (node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)),
        key=lambda node: (node.lineno, node.col_offset),
    )
    if not calls:
        raise ValueError(f"no function is called in {assertion!r}")
    return next((call.func.id for call in calls if not hasattr(builtins, call.func.id)), calls[0].func.id)


def to_problem(record: MbppRecord, fmt: str, *, few_shot: Sequence[MbppRecord] = (), tokenizer=None) -> Problem:
    """The record as a Problem: the prompt in `fmt`, the reference code as completion, test_list as tests,
    test_setup_code as setup (run after the solution, before the asserts), no code prefix. In the sandbox each
    `assert f(...) == LITERAL` is checked on plain data outside the program's interpreter, and the rest run
    after the program with its patches to modules undone (see Problem.program)."""
    return Problem(
        task_id=f"{record.source}/{record.task_id}",
        prompt=render_prompt(record, fmt, few_shot=few_shot, tokenizer=tokenizer),
        completion=record.code,
        tests=record.test_list,
        entry_point=called_function(record.test_list[0]),
        family=record.source,
        code_prefix="",
        setup=record.test_setup_code,
        meta={"task_id": record.task_id, "source": record.source, "format": fmt},
    )


def extra_tests_from_evalplus(path: Path) -> dict[int, tuple[str, ...]]:
    """MBPP+ tests from an EvalPlus `MbppPlus.jsonl` (rows with task_id "Mbpp/N", entry_point,
    canonical_solution, base_input, plus_input, atol): {N: (one test program,)}, for with_extra_tests.

    The file carries inputs but no expected outputs, so each test is a differential check: on every input
    it calls the canonical solution (exec'd in a namespace of its own) and the candidate's function named
    `entry_point`, each on its own copy of the input, and asserts the outputs match as EvalPlus's generic
    rule says: equal, or, when atol > 0 or the
    expected value is a float or a non-empty list/tuple of floats (atol 1e-6 then), same type and length
    and |out - expected| <= atol + 1e-7 * |expected| elementwise. A canonical solution that raises fails
    the test loudly. Not reproduced, so this is "MBPP with EvalPlus's inputs", not EvalPlus's verdict: its
    per-task oracles (Mbpp/164, 295, 558, 581; set-equality and not-None tasks), its loader's per-task
    conversion of JSON lists into tuples, sets or complex numbers, and its time limits scaled from the
    canonical solution's.
    """
    tests = {}
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task_id = int(str(row["task_id"]).rsplit("/", 1)[-1])
            inputs = list(row["base_input"]) + list(row["plus_input"])
            test = _EVALPLUS_CHECK.format(
                solution=row["canonical_solution"],
                entry_point=row["entry_point"],
                atol=float(row.get("atol") or 0),
                inputs=json.dumps(inputs),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{line_number}: not an EvalPlus MBPP+ record ({error!r})") from None
        if not str(row["entry_point"]).isidentifier():
            raise ValueError(f"{path}:{line_number}: entry_point {row['entry_point']!r} is not a name")
        tests[task_id] = (test,)
    if not tests:
        raise ValueError(f"{path}: no MBPP+ records")
    return tests


def with_extra_tests(problem: Problem, extra: tuple[str, ...]) -> Problem:
    """The problem with `extra` run after its own tests; meta counts them."""
    return replace(
        problem,
        tests=problem.tests + tuple(extra),
        meta={**problem.meta, "extra_tests": problem.meta.get("extra_tests", 0) + len(extra)},
    )


# ---- internals ---------------------------------------------------------------------------------------------

# One function, so that nothing but its own name enters the candidate's globals. Filled by str.format.
_EVALPLUS_CHECK = """\
def _evalplus_check():
    import copy, json
    reference = {{"__name__": "evalplus_reference"}}
    exec(compile({solution!r}, "<canonical solution>", "exec"), reference)
    atol = {atol!r}

    def is_floats(value):
        if isinstance(value, float):
            return True
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, float) for v in value)

    def same(out, expected):
        if out == expected:
            return True
        tolerance = 1e-6 if atol == 0 and is_floats(expected) else atol
        if tolerance == 0 or type(out) is not type(expected):
            return False
        if isinstance(expected, (list, tuple)) and len(out) != len(expected):
            return False
        pairs = list(zip(out, expected)) if isinstance(expected, (list, tuple)) else [(out, expected)]
        try:
            return all(abs(o - e) <= tolerance + 1e-7 * abs(e) for o, e in pairs)
        except TypeError:
            return False

    for index, args in enumerate(json.loads({inputs!r})):
        try:
            expected = reference[{entry_point!r}](*copy.deepcopy(args))
        except Exception as error:
            raise RuntimeError(f"MBPP+ input {{index}}: the canonical solution raised {{error!r}}") from None
        out = {entry_point}(*copy.deepcopy(args))
        assert same(out, expected), f"MBPP+ input {{index}}: got {{out!r:.200}}, expected {{expected!r:.200}}"


_evalplus_check()"""


def _hub_rows(sanitized: bool) -> list[dict]:
    """Every row of every split of the hub dataset's "full" or "sanitized" config."""
    offline = "or, offline, pass a local copy of the data with --data PATH"
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            f"loading MBPP from the Hugging Face hub needs the `datasets` package: pip install datasets "
            f"(or pip install 'ftcompare[hub]'), {offline}"
        ) from None
    config = "sanitized" if sanitized else "full"
    try:
        splits = datasets.load_dataset(HUB_DATASET, config)
    except Exception as error:  # offline, hub errors, cache trouble: all end the same way for the user
        raise RuntimeError(f"could not load {HUB_DATASET} ({config}) from the Hugging Face hub ({error}); {offline}") from error
    return [dict(row) for name in splits for row in splits[name]]


def _file_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each record of a JSON array file or a JSON lines file."""
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            return [(f"{path}: item {index}", row) for index, row in enumerate(json.loads(text))]
        return [(f"{path}:{number}", json.loads(line)) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON or JSON lines ({error})") from None


def _to_record(row: dict, source: str, where: str) -> MbppRecord:
    sanitized = source == "mbpp-sanitized"
    fields = _SANITIZED_FIELDS if sanitized else _FULL_FIELDS
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object")
    missing = [name for name in fields if name not in row]
    if missing:
        hint = ""
        if sanitized and "text" in row:
            hint = " (this is the full set: load it without sanitized=True)"
        elif not sanitized and "prompt" in row:
            hint = " (this is the sanitized subset: load it with sanitized=True)"
        raise ValueError(f"{where}: MBPP record lacks {', '.join(missing)}{hint}")
    lists = ("test_list", "test_imports") if sanitized else ("test_list", "challenge_test_list")
    for name in lists:
        if not isinstance(row[name], (list, tuple)) or not all(isinstance(item, str) for item in row[name]):
            raise ValueError(f"{where}: {name} must be a list of strings")
    if not row["test_list"]:
        raise ValueError(f"{where}: test_list is empty")
    try:
        return MbppRecord(
            task_id=int(row["task_id"]),
            text=row["prompt"] if sanitized else row["text"],
            code=_unix_line_ends(row["code"]),
            test_list=tuple(row["test_list"]),
            test_setup_code=_unix_line_ends("\n".join(row["test_imports"]) if sanitized else row["test_setup_code"]),
            challenge_test_list=() if sanitized else tuple(row["challenge_test_list"]),
            source=source,
        )
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{where}: not an MBPP record ({error})") from None


def _unix_line_ends(text: str) -> str:
    # The full set's code has CRLF line ends, and four of its records end in a lone CR.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _as_in_dataset(record: MbppRecord) -> str:
    """A few-shot record's code as lm-eval shows it: with the CRLF line ends of the full set's file (all of
    them in tasks 2, 3, 4); the sanitized file's code has "\\n" line ends already."""
    return record.code.replace("\n", "\r\n") if record.source == "mbpp" else record.code


def _austin_query(record: MbppRecord) -> str:
    if len(record.test_list) < 3:
        raise ValueError(f"task {record.task_id}: the austin3shot format shows three tests, it has {len(record.test_list)}")
    first, second, third = record.test_list[:3]
    return (
        f"You are an expert Python programmer, and here is your task: {record.text} "
        f"Your code should pass these tests:\n\n{first}\n{second}\n{third}\n[BEGIN]\n"
    )


def _instruction(record: MbppRecord) -> str:
    """The zeroshot and chat instruction: the text, the tests austin3shot shows too, the request."""
    tests = "\n".join(record.test_list[:3])
    return f"{record.text}\nYour code should pass these tests:\n\n{tests}\n\nWrite the Python function."


MBPP_SPLIT_NAMES = Literal["prompt", "train", "validation", "test"]


@register_task
class MbppTask(TaskSettings):
    """MBPP (Austin et al. 2021): fine-tune on one split, evaluate on another.

    MBPP's splits by task id: prompt 1–10, test 11–510, validation 511–600, train 601–974. Which split is
    trained on, scored, and used to choose learning rates must keep the reported one unseen: the checks below
    refuse every leak."""

    kind: Literal["mbpp"] = Field(default="mbpp", description="Selects this task: MBPP.")
    data: Path | None = Field(
        default=None,
        description="mbpp.jsonl or sanitized-mbpp.json; None: the Hugging Face "
        "hub (needs `pip install ftcompare[hub]` and a network).",
    )
    sanitized: bool = Field(default=False, description="The 427 hand-verified problems (sanitized-mbpp) instead of all 974.")
    format: Literal["austin3shot", "zeroshot", "chat"] = Field(
        default="austin3shot",
        description="Prompt format: austin3shot (lm-evaluation-harness's 3-shot prompt), zeroshot, "
        "or chat (the tokenizer's chat template).",
    )
    train_split: MBPP_SPLIT_NAMES = Field(default="train", description="Split fine-tuned on (task ids 601–974).")
    eval_split: MBPP_SPLIT_NAMES = Field(default="test", description="Split scored as the suite `test` (task ids 11–510).")
    validation_split: MBPP_SPLIT_NAMES | None = Field(
        default=None, description="Split scored as the suite `validation`, for choosing learning rates (task ids 511–600)."
    )
    extra_train: Path | None = Field(
        default=None, description="JSONL of {prompt, completion} pairs added to the fine-tuning data."
    )
    extra_tests: Path | None = Field(default=None, description="MBPP+ (EvalPlus) tests added to each problem's asserts.")

    _files = field_validator("data", "extra_train", "extra_tests")(existing_file)
    _problems = field_validator("extra_train")(readable_problems)

    @field_validator("train_split")
    @classmethod
    def _not_trained_on_test(cls, value: str) -> str:
        if value == "test":
            raise ValueError("training on the test split leaks it into the evaluation; train on train (task ids 601–974)")
        return value

    @field_validator("eval_split")
    @classmethod
    def _not_evaluated_on_training(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("train_split"):
            raise ValueError(f"{value!r} is also the train_split: the model would be scored on the problems it trains on")
        return value

    @field_validator("validation_split")
    @classmethod
    def _held_out_for_selection(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value in ("test", info.data.get("eval_split")):
            raise ValueError(
                f"choosing learning rates on {value!r}, the split that is reported, leaks it into the "
                "choice; use validation (task ids 511–600)"
            )
        if value is not None and value == info.data.get("train_split"):
            raise ValueError(
                f"{value!r} is also the train_split: learning rates chosen on the training problems "
                "reward memorising them; use validation (task ids 511–600)"
            )
        return value

    def suite_names(self) -> list[str]:
        return ["test", "validation"] if self.validation_split else ["test"]

    def load(self, tokenizer=None) -> TaskSplits:
        """Fine-tune on `train_split` (targets in the prompt format's answer form), evaluate on `eval_split`."""
        records = load_mbpp(self.data, sanitized=self.sanitized)
        few_shot = [r for r in records if r.task_id in AUSTIN_FEW_SHOT_IDS] if self.format == "austin3shot" else []
        few_shot.sort(key=lambda r: AUSTIN_FEW_SHOT_IDS.index(r.task_id))

        def problems(name: str) -> tuple[Problem, ...]:
            return tuple(to_problem(r, self.format, few_shot=few_shot, tokenizer=tokenizer) for r in split(records, name))

        evaluation = problems(self.eval_split)
        if self.extra_tests is not None:
            extra = extra_tests_from_evalplus(self.extra_tests)
            evaluation = tuple(with_extra_tests(p, extra.get(p.meta["task_id"], ())) for p in evaluation)
        train = tuple(replace(p, completion=training_completion(p.completion, self.format)) for p in problems(self.train_split))
        if self.extra_train is not None:
            train += load_jsonl_problems(self.extra_train, "extra_train")
        info = SuiteInfo(in_domain=True, extraction="auto", stop_strings=stop_sequences(self.format))
        suites, infos = {"test": evaluation}, {"test": info}
        if self.validation_split is not None:
            suites["validation"], infos["validation"] = problems(self.validation_split), info
        return TaskSplits(name="mbpp", train=train, suites=suites, info=infos)

    def counts(self) -> tuple[int | None, dict[str, int | None]]:
        if self.data is None:  # the hub, offline: unknown
            return None, {"test": None}
        records = load_mbpp(self.data, sanitized=self.sanitized)
        counts = {"test": len(split(records, self.eval_split))}
        if self.validation_split:
            counts["validation"] = len(split(records, self.validation_split))
        return len(split(records, self.train_split)), counts

    @classmethod
    def reference_problems(cls, data: Path | None, sanitized: bool = False) -> tuple[list[Problem], dict[str, str]]:
        """Every problem with its reference solution (zero-shot prompts), for the sandbox check."""
        return [to_problem(record, "zeroshot") for record in load_mbpp(data, sanitized=sanitized)], {}


register_benchmark("mbpp", MbppTask)
register_benchmark("mbpp-sanitized", MbppTask, sanitized=True)
