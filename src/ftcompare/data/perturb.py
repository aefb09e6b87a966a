"""Semantics-preserving, seeded perturbations of a `Problem`, after ReCode (Wang et al. 2022, "ReCode:
Robustness Evaluation of Code Generation Models", arXiv:2212.10264).

ReCode perturbs a prompt in four families, one per subsection of its §3 (section numbers of arXiv v1):
docstrings (§3.2: back-translation, typos such as ButterFingers and SwapCharacters, synonym substitution,
...), function names (§3.3: CamelCase, typos, synonyms, ...), code syntax (§3.4: variable renaming,
dead code, for-while, operand swap) and code format (§3.5: new lines, tab indent, line splits,
docstring to comments). Ours, one rule-based function per family, each `(problem, seed) -> Problem`:

- "docstring" `paraphrase_text`: synonyms from a built-in table, swaps of adjacent adjectives, typos, in
  the natural-language text only (docstring prose, the prose of an MBPP prompt).
- "function_name" `rename_function`: the entry point renamed everywhere (prompt, code_prefix, reference
  completion, setup, tests), whole identifiers only.
- "code_syntax" `perturb_code_syntax`: local variables of the functions whose code is in the prompt
  renamed (`rename_variables`); parameters too, unless a call passes them by keyword.
- "code_format" `reformat_code`: blank lines between statements, spaces around operators and brackets,
  trailing whitespace; the token stream is unchanged.

Prompt layouts: HumanEval style, where the prompt ends with `code_prefix` (signature and docstring), and
MBPP style, a prose prompt (`code_prefix == ""`) with asserts, and maybe few-shot code, in it. Code is
found in prose by the shape of its lines (asserts, defs, imports, assignments, doctests, fenced blocks).
ReCode applies its code-syntax and code-format families to a half-written solution put into the prompt;
we perturb only the code a prompt already holds, so the nominal prompt stays the task's own.

Only the target problem is perturbed, never what the prompt format puts around it (`_layout`): the
prompt is cut at few-shot ends ("[DONE]", Austin et al.'s MBPP prompt) and chat-template markup
(special tokens such as `<|im_start|>`, `<start_of_turn>`, `[INST]`, with the role name after one), and
the target is the piece that holds the problem's first test (else the last piece with text), plus the
code_prefix. Few-shot examples, system prompts and the format's fixed instruction (FORMAT_PHRASES) stay.

A family that finds nothing of the target's to change raises `NotApplicable` (a ValueError) with the
reason, instead of returning the nominal prompt as a "variant": variable renaming on an MBPP prompt in
any format (its target shows asserts, no function), any family on a chat prompt whose code_prefix is not
at its end (HumanEval chat). `family_variants` collects the reasons so the robustness scores cover the
problems a family applies to and say which it does not.

Each perturbation returns a new Problem, same task_id, meta extended with {"perturbation": family,
"seed": seed, "details": what changed}; the reference completion still passes the (renamed) tests.
Randomness comes from `random.Random` seeded by a string of family, seed and task_id: deterministic
across runs and platforms.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import re
import string
import tokenize
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from ftcompare.data.problems import Problem

# ---- word lists ------------------------------------------------------------------------------------

# Meaning-preserving in the language of programming tasks; ambiguous words ("times", "number", "list")
# are left out on purpose.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "return": ("give back", "output", "produce"),
    "returns": ("gives back", "outputs", "produces"),
    "write": ("create", "implement", "define"),
    "function": ("routine", "procedure"),
    "find": ("compute", "determine", "get"),
    "compute": ("calculate", "determine"),
    "calculate": ("compute", "determine"),
    "determine": ("find", "work out"),
    "check": ("verify", "determine", "test"),
    "get": ("obtain", "fetch"),
    "given": ("provided", "supplied"),
    "provided": ("given", "supplied"),
    "element": ("item", "entry"),
    "elements": ("items", "entries"),
    "largest": ("biggest", "greatest"),
    "smallest": ("least", "lowest"),
    "larger": ("bigger", "greater"),
    "smaller": ("lesser", "lower"),
    "greater": ("larger", "bigger"),
    "occurs": ("appears",),
    "reversed": ("in reverse order", "backwards"),
    "first": ("initial", "leading"),
    "shared": ("common",),
    "common": ("shared",),
    "whether": ("if",),
    "every": ("each",),
    "each": ("every",),
    "sum": ("total",),
    "remove": ("delete", "drop"),
    "unique": ("distinct",),
    "distinct": ("unique",),
    "integer": ("whole number",),
    "integers": ("whole numbers",),
    "result": ("outcome",),
}
# Intersective adjectives: "the given sorted list" and "the sorted given list" mean the same.
ADJECTIVES = frozenset(
    {
        "sorted",
        "unique",
        "distinct",
        "positive",
        "negative",
        "even",
        "odd",
        "empty",
        "nonempty",
        "given",
        "new",
        "lowercase",
        "uppercase",
        "nonnegative",
    }
)
FUNCTION_VERBS = (
    "compute",
    "get",
    "find",
    "calc",
    "derive",
    "produce",
    "evaluate",
    "solve",
    "handle",
    "determine",
    "build",
    "obtain",
)
FUNCTION_NOUNS = (
    "result",
    "value",
    "answer",
    "output",
    "total",
    "score",
    "item",
    "number",
    "data",
    "entry",
    "outcome",
    "quantity",
)
VARIABLE_WORDS = (
    "item",
    "elem",
    "val",
    "arg",
    "data",
    "obj",
    "num",
    "tmp",
    "cur",
    "inp",
    "param",
    "operand",
    "entry",
    "thing",
    "seq",
    "acc",
    "res",
    "var",
)
# Variables never renamed: a docstring's use of these as English words could not be told from the name.
_KEEP_NAMES = frozenset(
    {
        "self",
        "cls",
        "a",
        "an",
        "i",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "to",
        "as",
        "at",
        "be",
        "by",
        "if",
        "no",
        "so",
        "up",
        "we",
        "and",
        "the",
        "for",
        "not",
        "but",
        "all",
        "any",
    }
)
_RESERVED = frozenset(keyword.kwlist) | frozenset(getattr(keyword, "softkwlist", ())) | frozenset(dir(builtins))

_Edit = tuple[int, int, str]  # (start, end, replacement), offsets into one string
_Token = tuple[tokenize.TokenInfo, int, int]  # a token with its absolute start and end offsets

# The instruction a prompt format wraps around every problem (lm-eval's MBPP query, the MBPP zero-shot and
# chat request, the QuixBugs repair request): the format's words, not the problem's, so never paraphrased.
FORMAT_PHRASES = (
    "You are an expert Python programmer, and here is your task:",
    "Your code should pass these tests:",
    "Write the Python function.",
    "The following Python program has a bug. Fix it, changing as little as possible, and reply with the "
    "complete corrected program.",
    "It fails this check:",
    "This check does not finish within",
)


class NotApplicable(ValueError):
    """A family has nothing of the target problem's to perturb in this prompt; the message says why."""


# ---- the four families -----------------------------------------------------------------------------


def paraphrase_text(
    problem: Problem, seed: int, *, synonym_rate: float = 0.5, swap_rate: float = 0.5, typo_rate: float = 0.05
) -> Problem:
    """Rule-based edits of the prompt's natural-language text (ReCode §3.2, docstring perturbations).

    Each editable word is replaced by a synonym from SYNONYMS with probability `synonym_rate`, each pair of
    adjacent ADJECTIVES ("sorted unique", "even and odd") swapped with probability `swap_rate`, and each
    remaining word of three letters or more gets a typo (two letters swapped, one dropped or one inserted)
    with probability `typo_rate`; with no edit drawn, one is forced where any word is editable. Never
    edited: code (signatures, asserts, doctest lines, code blocks), identifiers of the problem's code where
    they appear in prose, numbers, quoted text ('x', "x", `x`), words in markup (<|im_start|>user,
    [BEGIN]), words with inner capitals or underscores, FORMAT_PHRASES, and anything outside the target
    problem (few-shot examples, a system prompt). NotApplicable when no word can be edited.
    """
    rng = random.Random(f"docstring:{seed}:{problem.task_id}")
    before, head, after, prefix = _layout(problem)
    texts = {"head": head, "prefix": prefix}
    candidates, protected = _paraphrase_candidates(problem, head, prefix)
    if not candidates:
        raise NotApplicable(f"{problem.task_id}: no word of the target problem's prose can be edited")
    edits: dict[str, list[_Edit]] = {"head": [], "prefix": []}
    log: list[dict] = []
    used = _swap_adjectives(candidates, texts, rng, swap_rate, edits, log)

    def synonym(word: str) -> str | None:
        options = [s for s in SYNONYMS.get(word.lower(), ()) if not set(s.split()) & protected]
        return _match_case(word, rng.choice(options)) if options else None

    def typo(word: str) -> str | None:
        for _ in range(5):  # a slip must not spell one of the code's names ("words" -> "word")
            if (new := _typo(word, rng)) not in protected:
                return new
        return None

    for i, (part, start, end, word, _) in enumerate(candidates):
        if i in used:
            continue
        if word.lower() in SYNONYMS and rng.random() < synonym_rate and (new := synonym(word)):
            edits[part].append((start, end, new))
            log.append({"op": "synonym", "from": word, "to": new})
        elif len(word) >= 3 and rng.random() < typo_rate and (new := typo(word)):
            edits[part].append((start, end, new))
            log.append({"op": "typo", "from": word, "to": new})
    if not log and candidates:  # force one edit: a synonym where one exists, else a typo
        with_synonym = [c for c in candidates if synonym(c[3]) is not None]
        part, start, end, word, _ = rng.choice(with_synonym or [c for c in candidates if len(c[3]) >= 3] or candidates)
        new = synonym(word) if with_synonym else typo(word)
        if new:
            edits[part].append((start, end, new))
            log.append({"op": "synonym" if with_synonym else "typo", "from": word, "to": new})

    new_head, new_prefix = _apply_edits(head, edits["head"]), _apply_edits(prefix, edits["prefix"])
    return _perturbed(
        problem, "docstring", seed, {"edits": log}, prompt=before + new_head + after + new_prefix, code_prefix=new_prefix
    )


def rename_function(problem: Problem, seed: int) -> Problem:
    """The entry point renamed everywhere (ReCode §3.3, function-name perturbations).

    The new name is drawn from FUNCTION_VERBS x FUNCTION_NOUNS as snake_case or camelCase, or is the old
    name in camelCase (ReCode's FuncRenameCamelCase), and collides with no name or word of the problem. In
    code (prompt code, code_prefix + completion, setup, tests, doctest lines) every NAME token equal to the
    old name is renamed, except attributes (`obj.name`); strings are left alone. In prose and docstring
    text only occurrences that read as code are: identifier-shaped names (with "_", digits or inner
    capitals), names followed by "(", in backticks or quotes, or after "function"/"def"/"method". Only the
    target problem's part of the prompt is edited; NotApplicable when it never names the entry point.
    """
    old = problem.entry_point
    if not old:
        raise ValueError(f"{problem.task_id}: no entry_point to rename")
    rng = random.Random(f"function_name:{seed}:{problem.task_id}")
    new, style = _new_function_name(old, rng, _taken_names(problem))
    mapping = {old: new}
    before, head, after, prefix = _layout(problem)
    new_head = _apply_edits(head, _rename_prose_edits(head, mapping))
    if prefix:
        joined = prefix + problem.completion
        new_prefix, completion = _apply_split(joined, _rename_code_edits(joined, mapping), len(prefix))
    else:
        completion = _apply_edits(problem.completion, _rename_code_edits(problem.completion, mapping))
        new_prefix = prefix
    if new_head + new_prefix == head + prefix:
        raise NotApplicable(f"{problem.task_id}: the target problem's part of the prompt never names {old}")
    return _perturbed(
        problem,
        "function_name",
        seed,
        {"old": old, "new": new, "style": style},
        prompt=before + new_head + after + new_prefix,
        code_prefix=new_prefix,
        completion=completion,
        tests=tuple(_apply_edits(test, _rename_code_edits(test, mapping)) for test in problem.tests),
        setup=_apply_edits(problem.setup, _rename_code_edits(problem.setup, mapping)),
        entry_point=new,
    )


def rename_variables(code: str, seed: int) -> str:
    """`code` with the local variables of its functions renamed (ReCode §3.4, VarRenamer).

    `ast` finds, per outermost function, the names bound in its own scope (parameters, assignment, for and
    with targets, walrus); `tokenize` rewrites exactly the NAME tokens `ast` places, in the function body,
    nested scopes included, so keyword arguments, attributes and strings stay. Left alone: names that are
    also imported, declared global or nonlocal, bound by a nested def or class, by `except ... as` or
    `match`, used as keyword-argument names anywhere in `code`, or in functions that call locals(),
    vars(), eval() or exec(). The function's own docstring follows the renaming (whole words outside
    quotes). Code that does not parse comes back unchanged.
    """
    rng = random.Random(f"rename_variables:{seed}")
    taken = _identifiers(code) | _RESERVED
    edits, _ = _local_rename_edits(code, rng, taken, keep=frozenset())
    return _apply_edits(code, edits)


def perturb_code_syntax(problem: Problem, seed: int) -> Problem:
    """Local variables renamed in the code the prompt holds (ReCode §3.4, variable renaming).

    Few-shot functions in the prompt get `rename_variables`' renaming. For the code_prefix, renaming runs on
    code_prefix + completion together, so a parameter renamed in the signature is renamed in the reference
    completion and its docstring too; names that appear only in the completion are left as they are.
    Parameters passed by keyword anywhere (tests, setup, prompt code, doctests) keep their names: tests
    call the entry point with positional arguments, which a renaming cannot break. Only code of the target
    problem is renamed, never few-shot examples; NotApplicable when it has no renamable name (MBPP prompts,
    whose target shows only asserts).
    """
    rng = random.Random(f"code_syntax:{seed}:{problem.task_id}")
    taken = _taken_names(problem)
    before, head, after, prefix = _layout(problem)
    pieces = [problem.completion, problem.setup, *problem.tests]
    pieces += _code_pieces(head, python=False) + (_code_pieces(prefix, python=True) if prefix else [])
    keep = frozenset().union(*(_keyword_names(piece) for piece in pieces))
    head_edits, records = [], []
    for start, end, kind in _prose_regions(head):
        if kind == "python":
            edits, found = _local_rename_edits(head[start:end], rng, taken, keep)
            head_edits += _shift(edits, start)
            records += found
    new_prefix, completion = prefix, problem.completion
    if prefix:
        joined = prefix + problem.completion
        edits, found = _local_rename_edits(joined, rng, taken, keep, prompt_end=len(prefix))
        new_prefix, completion = _apply_split(joined, edits, len(prefix))
        records += found
    if not records:
        raise NotApplicable(f"{problem.task_id}: the target problem's code in the prompt has no variable to rename")
    return _perturbed(
        problem,
        "code_syntax",
        seed,
        {"renamed": records},
        prompt=before + _apply_edits(head, head_edits) + after + new_prefix,
        code_prefix=new_prefix,
        completion=completion,
    )


def reformat_code(
    problem: Problem, seed: int, *, blank_line_rate: float = 0.2, spacing_rate: float = 0.1, trailing_rate: float = 0.2
) -> Problem:
    """Whitespace changes in the prompt's code (ReCode §3.5, code-format perturbations).

    In the code_prefix and the code blocks of a prose prompt (not doctest lines, not inside strings or
    comments): after each statement a blank line with probability `blank_line_rate`; around each operator,
    comma, colon or bracket on a line the gap set to "" or " " (whichever it is not) with probability
    `spacing_rate`, never gluing two operators; at each line end trailing whitespace with probability
    `trailing_rate`. One change is forced when none is drawn. Every region is re-tokenized afterwards: its
    tokens must be the same, or its spacing changes are dropped. Only the target problem's code is
    reformatted (its asserts in an MBPP prompt), never few-shot code; NotApplicable when it has none.
    """
    rng = random.Random(f"code_format:{seed}:{problem.task_id}")
    before, head, after, prefix = _layout(problem)
    regions = [("head", start, end) for start, end, kind in _prose_regions(head) if kind == "python"]
    regions += [("prefix", 0, len(prefix))] if prefix else []
    texts = {"head": head, "prefix": prefix}
    rates = {"blank": blank_line_rate, "spacing": spacing_rate, "trailing": trailing_rate}
    options = [(region, option) for region in regions for option in _format_options(texts[region[0]][region[1] : region[2]])]
    chosen = {i for i, (_, (_, _, kind, _)) in enumerate(options) if rng.random() < rates[kind]}
    if not chosen and options:
        chosen = {rng.randrange(len(options))}
    by_region: dict[tuple, list[tuple[_Edit, str]]] = defaultdict(list)
    for i in sorted(chosen):
        region, (start, end, kind, alternatives) = options[i]
        by_region[region].append(((start, end, rng.choice(alternatives)), kind))
    edits: dict[str, list[_Edit]] = {"head": [], "prefix": []}
    counts = {"blank": 0, "spacing": 0, "trailing": 0}
    for region, planned in by_region.items():
        part, start, end = region
        source = texts[part][start:end]
        for kinds in (("blank", "spacing", "trailing"), ("blank", "trailing")):
            kept = [(edit, kind) for edit, kind in planned if kind in kinds]
            if _same_tokens(source, _apply_edits(source, [edit for edit, _ in kept])):
                edits[part] += _shift([edit for edit, _ in kept], start)
                for _, kind in kept:
                    counts[kind] += 1
                break
    new_head, new_prefix = _apply_edits(head, edits["head"]), _apply_edits(prefix, edits["prefix"])
    if new_head + new_prefix == head + prefix:
        raise NotApplicable(f"{problem.task_id}: the target problem's part of the prompt holds no code to reformat")
    return _perturbed(problem, "code_format", seed, counts, prompt=before + new_head + after + new_prefix, code_prefix=new_prefix)


PERTURBATIONS: dict[str, Callable[[Problem, int], Problem]] = {
    "docstring": paraphrase_text,
    "function_name": rename_function,
    "code_syntax": perturb_code_syntax,
    "code_format": reformat_code,
}
_TRIES_PER_VARIANT = 10


def perturbed_variants(problem: Problem, names: Sequence[str], s: int, seed: int) -> list[Problem]:
    """`s` perturbed variants of `problem` for each family in `names` (keys of PERTURBATIONS), in order:
    family by family, meta["variant"] 0..s-1 within a family.

    Variant seeds are distinct draws from random.Random(f"variants:{name}:{seed}"), the same for every
    problem (ReCode's s0, s1, ... perturbed datasets). A draw whose prompt equals the nominal one or an
    earlier variant's is skipped, up to 10*s draws; a family that cannot make s distinct prompts repeats
    its variants. A family with nothing to change raises NotApplicable (see family_variants).
    """
    if s < 1:
        raise ValueError(f"s must be >= 1, got {s}")
    unknown = [name for name in names if name not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbations {unknown}; choose from {sorted(PERTURBATIONS)}")
    variants = []
    for name in names:
        rng = random.Random(f"variants:{name}:{seed}")
        seeds: list[int] = []
        kept, repeated, seen = [], [], {problem.prompt}
        while len(kept) < s and len(seeds) < _TRIES_PER_VARIANT * s:
            variant_seed = rng.randrange(2**31)
            if variant_seed in seeds:
                continue
            seeds.append(variant_seed)
            variant = PERTURBATIONS[name](problem, variant_seed)
            (repeated if variant.prompt in seen else kept).append(variant)
            seen.add(variant.prompt)
        kept += repeated[: s - len(kept)]
        variants += [replace(v, meta={**v.meta, "variant": i}) for i, v in enumerate(kept)]
    return variants


def family_variants(problems: Sequence[Problem], name: str, s: int, seed: int) -> tuple[list[Problem], dict[str, str]]:
    """perturbed_variants of every problem for family `name`, and {task_id: reason} for the problems the
    family does not apply to (NotApplicable): they have no variant, and are not scored as if they had."""
    variants, not_applicable = [], {}
    for problem in problems:
        try:
            variants += perturbed_variants(problem, [name], s, seed)
        except NotApplicable as reason:
            not_applicable[problem.task_id] = str(reason)
    return variants, not_applicable


# ---- prompt layout ---------------------------------------------------------------------------------

# Where a prose prompt's pieces meet: the end of a few-shot example, or a chat template's markup (special
# tokens, and the role name that follows one).
_SEPARATOR = re.compile(
    r"\[DONE\]|(?:<\|[^|\n]*\|>|<｜[^｜\n]*｜>|<(?:start|end)_of_turn>|\[/?INST\]|</?s>)"
    r"(?:[ \t]*(?:system|user|assistant|model|human)\b)?"
)


def _layout(problem: Problem) -> tuple[str, str, str, str]:
    """(before, head, after, prefix) with prompt == before + head + after + prefix: prefix is the
    code_prefix (Python), head the target problem's prose (with its code), before and after what the
    prompt format puts around it (few-shot examples, chat markup, a system prompt), never perturbed.

    The text ahead of the prefix is cut at every _SEPARATOR; head is the piece that holds the last
    occurrence of the problem's first test, else the last piece that is not blank; with a code_prefix,
    the last piece (the prefix follows it)."""
    prefix = problem.code_prefix
    if prefix and not problem.prompt.endswith(prefix):
        raise NotApplicable(
            f"{problem.task_id}: the prompt does not end with the code_prefix (a chat "
            "template around it); perturbations need prompt == text + code_prefix"
        )
    text = problem.prompt[: len(problem.prompt) - len(prefix)]
    cuts = [(m.start(), m.end()) for m in _SEPARATOR.finditer(text)]
    pieces = list(zip([0] + [end for _, end in cuts], [start for start, _ in cuts] + [len(text)]))
    anchor = text.rfind(problem.tests[0]) if problem.tests and problem.tests[0].strip() else -1
    if prefix:
        start, end = pieces[-1]
    elif anchor >= 0:
        start, end = next((s, e) for s, e in pieces if s <= anchor < e)
    else:
        start, end = next((p for p in reversed(pieces) if text[p[0] : p[1]].strip()), pieces[-1])
    return text[:start], text[start:end], text[end:], prefix


def _perturbed(problem: Problem, name: str, seed: int, details: dict, **fields) -> Problem:
    if not problem.code_prefix:
        fields["code_prefix"] = ""
    meta = {**problem.meta, "perturbation": name, "seed": seed, "details": details}
    return replace(problem, meta=meta, **fields)


_CODE_LINE = re.compile(
    r"\s*(?:assert\b|def\s|async\s+def\s|class\s|import\s|from\s+[\w.]+\s+import\b|@[A-Za-z_]|#|return\b|"
    r"print\(|(?:if|elif|else|for|while|with|try|except|finally)\b.*:\s*$|"
    r"[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*(?:[-+*/%&|^]|//|\*\*)?=(?!=))"
)
_DOCTEST = re.compile(r"\s*(?:>>>|\.\.\.)(?: |$)")


def _prose_regions(text: str) -> list[tuple[int, int, str]]:
    """`text` cut into (start, end, kind) regions that cover it: "text" (natural language), "python" (a run
    of code lines, or a fenced block's body), "doctest" (the code of one `>>>` or `...` line), "raw"
    (fences, doctest prompts and outputs, blank lines outside code)."""
    lines = re.findall(r"[^\n]*\n|[^\n]+", text)
    kinds: list[str] = []
    in_fence = after_doctest = False
    block_indent = -1
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("```"):
            kind, in_fence = "raw", not in_fence
        elif in_fence:
            kind = "python"
        elif _DOCTEST.match(line) and (stripped.startswith(">>>") or after_doctest):
            kind, after_doctest = "doctest", True
        elif not stripped:
            kind, after_doctest = "blank", False
        elif after_doctest:
            kind = "raw"  # a doctest's expected output
        elif _CODE_LINE.match(line):
            kind = "python"
            if not (kinds and _last_code(kinds) == "python" and indent > block_indent):
                block_indent = indent
        elif kinds and _last_code(kinds) == "python" and indent > block_indent:
            kind = "python"  # the indented body of a def, class or block
        else:
            kind = "text"
        kinds.append(kind)
    for i, kind in enumerate(kinds):  # blank lines inside a code block belong to it
        if kind == "blank":
            before = next((k for k in reversed(kinds[:i]) if k != "blank"), None)
            after = next((k for k in kinds[i + 1 :] if k != "blank"), None)
            kinds[i] = "python" if before == after == "python" else "raw"
    regions: list[list] = []
    position = 0
    for line, kind in zip(lines, kinds):
        end = position + len(line)
        if kind == "doctest":
            marker = position + _DOCTEST.match(line).end()
            regions += [[position, marker, "raw"], [marker, end, "doctest"]]
        elif regions and regions[-1][2] == kind != "doctest":
            regions[-1][1] = end
        else:
            regions.append([position, end, kind])
        position = end
    return [tuple(region) for region in regions]


def _last_code(kinds: list[str]) -> str | None:
    return next((k for k in reversed(kinds) if k != "blank"), None)


def _text_spans(text: str, python: bool) -> list[tuple[int, int]]:
    """The natural-language spans of `text`: prose regions, and the prose lines of docstrings in code."""
    if python:
        toks = _tokens(text)
        if toks is None:
            return []
        spans = []
        for index in _string_statements(toks):
            tok, start, _ = toks[index]
            body = _string_body(tok.string)
            if body:
                inner = tok.string[body[0] : body[1]]
                spans += [(start + body[0] + s, start + body[0] + e) for s, e in _text_spans(inner, False)]
        return spans
    spans = []
    for start, end, kind in _prose_regions(text):
        if kind == "text":
            spans.append((start, end))
        elif kind == "python":
            spans += [(start + s, start + e) for s, e in _text_spans(text[start:end], True)]
    return spans


def _code_pieces(text: str, python: bool) -> list[str]:
    """The code in `text`: whole Python regions, and the code of doctest lines (in docstrings too)."""
    if python:
        pieces = [text]
        toks = _tokens(text) or []
        for index in _string_statements(toks):
            tok = toks[index][0]
            body = _string_body(tok.string)
            if body:
                pieces += [p for p in _code_pieces(tok.string[body[0] : body[1]], False)]
        return pieces
    pieces = []
    for start, end, kind in _prose_regions(text):
        if kind == "python":
            pieces += _code_pieces(text[start:end], True)
        elif kind == "doctest":
            pieces.append(text[start:end].strip())
    return pieces


# ---- tokens and edits ------------------------------------------------------------------------------


def _tokens(source: str) -> list[_Token] | None:
    """The tokens of `source` with absolute offsets, or None where it does not tokenize."""
    starts = [0]
    for line in io.StringIO(source).readlines():
        starts.append(starts[-1] + len(line))
    try:
        raw = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    result = []
    for tok in raw:
        if tok.type == tokenize.ERRORTOKEN and not tok.string.isspace():
            return None
        result.append((tok, starts[tok.start[0] - 1] + tok.start[1], starts[tok.end[0] - 1] + tok.end[1]))
    return result


def _string_statements(toks: list[_Token]) -> list[int]:
    """Indices of STRING tokens that are a statement on their own: docstrings, bare strings."""
    significant = [i for i, (tok, _, _) in enumerate(toks) if tok.type not in (tokenize.NL, tokenize.COMMENT)]
    found = []
    for j, i in enumerate(significant):
        if toks[i][0].type != tokenize.STRING:
            continue
        before = toks[significant[j - 1]][0].type if j else None
        after = toks[significant[j + 1]][0].type if j + 1 < len(significant) else None
        if before in (None, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) and after in (
            None,
            tokenize.NEWLINE,
            tokenize.ENDMARKER,
        ):
            found.append(i)
    return found


def _string_body(literal: str) -> tuple[int, int] | None:
    """(start, end) of the text between a string literal's quotes; None for bytes and f-strings."""
    match = re.match(r"([rRuU]?)('''|\"\"\"|'|\")", literal)
    if not match:
        return None
    return match.end(), len(literal) - len(match.group(2))


def _apply_edits(text: str, edits: Iterable[_Edit]) -> str:
    out, last = [], 0
    for start, end, new in sorted(edits, key=lambda edit: (edit[0], edit[1])):
        if start < last:
            raise AssertionError(f"overlapping edits at {start}")
        out += [text[last:start], new]
        last = end
    return "".join(out) + text[last:]


def _apply_split(text: str, edits: list[_Edit], boundary: int) -> tuple[str, str]:
    """`text` edited, cut where `boundary` was: (the part before, the part after)."""
    if any(start < boundary < end for start, end, _ in edits):
        raise AssertionError("an edit straddles the prompt's end")
    new = _apply_edits(text, edits)
    moved = boundary + sum(len(r) - (end - start) for start, end, r in edits if end <= boundary and start < boundary)
    return new[:moved], new[moved:]


def _shift(edits: Iterable[_Edit], offset: int) -> list[_Edit]:
    return [(start + offset, end + offset, new) for start, end, new in edits]


def _identifiers(*texts: str) -> set[str]:
    return {word for text in texts for word in re.findall(r"[A-Za-z_]\w*", text)}


def _blank_out(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


def _taken_names(problem: Problem) -> set[str]:
    """Every word of the problem and every reserved name: what a new name must not be."""
    return _identifiers(problem.prompt, problem.completion, problem.setup, *problem.tests) | _RESERVED


def _keyword_names(source: str) -> set[str]:
    """Names passed as keyword arguments (`f(x=1)`) in `source`; every parameter name where a call unpacks
    `**kwargs` is marked by "**"."""
    try:
        tree = ast.parse(source.strip())
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names |= {kw.arg if kw.arg is not None else "**" for kw in node.keywords}
    return names


# ---- paraphrase helpers ----------------------------------------------------------------------------


def _paraphrase_candidates(problem: Problem, head: str, prefix: str) -> tuple[list[tuple], set[str]]:
    """The words paraphrasing may edit, as (part, start, end, word, span id) with part "head" or
    "prefix", and the protected names: every identifier of the problem's code, in or out of the prompt."""
    protected = _identifiers(problem.completion, problem.setup, *problem.tests, problem.entry_point)
    protected |= {"True", "False", "None"}
    candidates = []
    for part, text, python in (("head", head, False), ("prefix", prefix, True)):
        spans = _text_spans(text, python)
        protected |= _identifiers(_blank_out(text, spans))
        fixed = [(m.start(), m.end()) for phrase in FORMAT_PHRASES for m in re.finditer(re.escape(phrase), text)]
        for span_id, (start, end) in enumerate(spans):
            candidates += [
                (part, s, e, w, span_id)
                for s, e, w in _editable_words(text, start, end)
                if not any(fs <= s < fe for fs, fe in fixed)
            ]
    return [c for c in candidates if c[3] not in protected], protected


def _swap_adjectives(
    candidates: list[tuple],
    texts: dict[str, str],
    rng: random.Random,
    rate: float,
    edits: dict[str, list[_Edit]],
    log: list[dict],
) -> set[int]:
    """Swap pairs of ADJECTIVES joined by " ", " and " or " or " with probability `rate`, adding to
    `edits` and `log`; the indices of the candidates used."""
    used: set[int] = set()
    # "and"/"or" is a candidate word itself unless the code uses it as a keyword: pair across it either way
    pairs = [(i, i + 1) for i in range(len(candidates) - 1)] + [(i, i + 2) for i in range(len(candidates) - 2)]
    for i, j in pairs:
        (part, s1, e1, w1, span1), (part2, s2, e2, w2, span2) = candidates[i], candidates[j]
        if (part, span1) != (part2, span2) or set(range(i, j + 1)) & used:
            continue
        between = texts[part][e1:s2]
        joints = (" ", " and ", " or ") if j == i + 1 else (" and ", " or ")
        if (
            between in joints
            and w1.lower() in ADJECTIVES
            and w2.lower() in ADJECTIVES
            and w1.lower() != w2.lower()
            and rng.random() < rate
        ):
            first, second = _match_case(w1, w2), _match_case(w2, w1)  # each word takes its slot's case
            edits[part] += [(s1, e1, first), (s2, e2, second)]
            log.append({"op": "swap", "from": f"{w1}{between}{w2}", "to": f"{first}{between}{second}"})
            used |= set(range(i, j + 1))
    return used


_QUOTED = re.compile(r"(?<![A-Za-z])'[^'\n]*'(?![A-Za-z])|\"[^\"\n]*\"|`[^`\n]*`")
_GLUE = set("_.\\<>|[]{}/@#$=()`'\"0123456789")


def _editable_words(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """Words of text[start:end] that paraphrasing may edit: ASCII letters, not quoted, not glued to markup
    or code punctuation, no capitals past the first letter."""
    span = text[start:end]
    quoted = [(m.start(), m.end()) for m in _QUOTED.finditer(span)]
    words = []
    for m in re.finditer(r"[A-Za-z]+", span):
        s, e = m.start() + start, m.end() + start
        word = m.group()
        if any(qs <= m.start() < qe for qs, qe in quoted) or not word[1:].islower() and len(word) > 1:
            continue
        if _glued(text, s, e, start, end):
            continue
        words.append((s, e, word))
    return words


def _glued(text: str, s: int, e: int, start: int, end: int) -> bool:
    """Whether the word text[s:e] touches markup or code punctuation inside its span text[start:end]
    (`obj.attr`, `<|im_start|>user`, `[DONE]`, `x_1`); a sentence's full stop does not count."""
    before = text[s - 1] if s > start else " "
    after = text[e] if e < end else " "
    if before == ".":
        return s - 2 >= start and (text[s - 2].isalnum() or text[s - 2] == "_")
    if after == ".":
        return e + 1 < end and (text[e + 1].isalnum() or text[e + 1] == "_")
    return before in _GLUE or after in _GLUE


def _match_case(model: str, word: str) -> str:
    return word[0].upper() + word[1:] if model[0].isupper() else word[0].lower() + word[1:]


def _typo(word: str, rng: random.Random) -> str:
    """A keyboard slip in `word`: two adjacent letters swapped, a letter dropped, or a letter inserted."""
    for _ in range(20):
        op = rng.choice(("swap", "drop", "insert"))
        i = rng.randrange(len(word))
        if op == "swap" and i + 1 < len(word):
            new = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif op == "drop" and len(word) > 3:
            new = word[:i] + word[i + 1 :]
        else:
            new = word[:i] + rng.choice(string.ascii_lowercase) + word[i:]
        if new != word:
            return new
    return word + word[-1]


# ---- renaming helpers ------------------------------------------------------------------------------


def _new_function_name(old: str, rng: random.Random, taken: set[str]) -> tuple[str, str]:
    parts = [p for p in old.split("_") if p]
    styles = ["snake", "camel"] + (["camel_of_old"] if len(parts) > 1 else [])
    for _ in range(100):
        style = rng.choice(styles)
        verb, noun = rng.choice(FUNCTION_VERBS), rng.choice(FUNCTION_NOUNS)
        if style == "snake":
            name = f"{verb}_{noun}"
        elif style == "camel":
            name = verb + noun.capitalize()
        else:
            name = parts[0].lower() + "".join(p.capitalize() for p in parts[1:])
        if name != old and name not in taken:
            return name, style
    suffix = 2
    while f"{old}_{suffix}" in taken:
        suffix += 1
    return f"{old}_{suffix}", "suffix"


def _fresh_variable_name(rng: random.Random, taken: set[str]) -> str:
    for attempt in range(100):
        name = rng.choice(VARIABLE_WORDS) + (str(rng.randrange(10)) if attempt >= 5 or rng.random() < 0.3 else "")
        if name not in taken:
            taken.add(name)
            return name
    counter = 0
    while f"var_{counter}" in taken:
        counter += 1
    taken.add(f"var_{counter}")
    return f"var_{counter}"


def _rename_code_edits(source: str, mapping: dict[str, str]) -> list[_Edit]:
    """Edits renaming, in Python `source`, every NAME token in `mapping` that is not an attribute, and the
    code-like mentions in its docstrings and comments (see rename_function). Source that does not
    tokenize is renamed by whole identifiers outside string literals and comments."""
    if not source or not any(name in source for name in mapping):
        return []
    toks = _tokens(source)
    if toks is None:
        return _rename_fallback_edits(source, mapping)
    docstrings = set(_string_statements(toks))
    edits: list[_Edit] = []
    previous = None
    for index, (tok, start, end) in enumerate(toks):
        if (
            tok.type == tokenize.NAME
            and tok.string in mapping
            and not (previous is not None and previous.type == tokenize.OP and previous.string == ".")
        ):
            edits.append((start, end, mapping[tok.string]))
        elif tok.type == tokenize.COMMENT:
            edits += _shift(_rename_text_edits(tok.string, mapping, code_like=True), start)
        elif index in docstrings and (body := _string_body(tok.string)):
            inner_start = start + body[0]
            edits += _shift(_rename_prose_edits(tok.string[body[0] : body[1]], mapping), inner_start)
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok
    return edits


def _rename_prose_edits(text: str, mapping: dict[str, str]) -> list[_Edit]:
    """Renaming in prose with code in it: code regions by token, text by its code-like mentions."""
    edits: list[_Edit] = []
    for start, end, kind in _prose_regions(text):
        if kind in ("python", "doctest"):
            edits += _shift(_rename_code_edits(text[start:end], mapping), start)
        elif kind == "text":
            edits += _shift(_rename_text_edits(text[start:end], mapping, code_like=True), start)
    return edits


def _rename_fallback_edits(source: str, mapping: dict[str, str]) -> list[_Edit]:
    masked = re.sub(r"(?s)'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|\"[^\"\n]*\"|#[^\n]*", lambda m: " " * len(m.group()), source)
    return [
        (m.start(), m.end(), mapping[m.group()]) for m in re.finditer(r"(?<![\w.])[A-Za-z_]\w*", masked) if m.group() in mapping
    ]


def _rename_text_edits(text: str, mapping: dict[str, str], *, code_like: bool) -> list[_Edit]:
    """Whole-word renaming in natural-language `text`. With `code_like`, only mentions that read as code
    (see rename_function); without, every whole-word mention outside '...' and "..." quotes."""
    quoted = [(m.start(), m.end()) for m in re.finditer(r"(?<![A-Za-z])'[^'\n]*'(?![A-Za-z])|\"[^\"\n]*\"", text)]
    edits = []
    for m in re.finditer(r"(?<![\w.\\])[A-Za-z_]\w*(?!\w)", text):
        name = m.group()
        if name not in mapping:
            continue
        before, after = text[: m.start()], text[m.end() :]
        if code_like:
            ok = (
                bool(re.search(r"_|\d|.[A-Z]", name))
                or bool(re.match(r"\s*\(", after))
                or (before[-1:] in ("`", "'", '"') and after[:1] == before[-1:])
                or bool(re.search(r"(?i)\b(?:function|def|method)\s+$", before))
            )
        else:
            ok = not any(qs <= m.start() < qe for qs, qe in quoted)
        if ok:
            edits.append((m.start(), m.end(), mapping[name]))
    return edits


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)
_DYNAMIC = frozenset({"locals", "vars", "eval", "exec", "globals"})


def _outer_functions(node: ast.AST) -> Iterable[ast.FunctionDef | ast.AsyncFunctionDef]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child
        else:
            yield from _outer_functions(child)


def _own_bindings(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names bound in the function's own scope: parameters and Name targets outside nested scopes."""
    args = function.args
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg] if a}
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPES):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        stack.extend(ast.iter_child_nodes(node))
    return names


def _token_position(source: str) -> Callable[[ast.AST], tuple[int, int]]:
    """An ast node's (row, column) as tokenize counts them: ast counts columns in UTF-8 bytes."""
    lines = io.StringIO(source).readlines()

    def position(node: ast.AST) -> tuple[int, int]:
        row, column = node.lineno, node.col_offset
        line = lines[row - 1] if row <= len(lines) else ""
        if not line.isascii():
            column = len(line.encode("utf-8")[:column].decode("utf-8", errors="ignore"))
        return row, column

    return position


def _unrenamable(tree: ast.AST) -> set[str]:
    """Names bound where no Name node marks them (imports, def/class names, except-as, match captures),
    declared global or nonlocal, or bound in a class body."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {
                    n.id for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                }
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names |= set(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        for attribute in ("name", "rest"):  # match-statement captures (MatchAs, MatchStar, MatchMapping)
            value = getattr(node, attribute, None)
            if type(node).__name__.startswith("Match") and isinstance(value, str):
                names.add(value)
    return names


def _local_rename_edits(
    source: str, rng: random.Random, taken: set[str], keep: frozenset[str], prompt_end: int | None = None
) -> tuple[list[_Edit], list[dict]]:
    """Edits renaming the locals of every outermost function of `source` (see rename_variables), and a
    record per function renamed. With `prompt_end`, only names that occur before that offset are renamed.
    New names are drawn from VARIABLE_WORDS, never one of `taken` (which they join)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [], []
    toks = _tokens(source)
    if toks is None:
        return [], []
    names_at = {tok.start: (tok.string, start, end) for tok, start, end in toks if tok.type == tokenize.NAME}
    strings_at = {tok.start: (tok, start) for tok, start, _ in toks if tok.type == tokenize.STRING}
    position = _token_position(source)
    keep = keep | _keyword_names(source)
    excluded = _unrenamable(tree) | _KEEP_NAMES | keep
    edits: list[_Edit] = []
    records = []
    for function in _outer_functions(tree):
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _DYNAMIC for n in ast.walk(function)):
            continue
        occurrences: dict[str, list[tuple[int, int]]] = defaultdict(list)
        args = function.args
        for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
            if a:
                occurrences[a.arg].append(position(a))
        for statement in function.body:
            for node in ast.walk(statement):
                if isinstance(node, ast.Name):
                    occurrences[node.id].append(position(node))
                elif isinstance(node, ast.arg):
                    occurrences[node.arg].append(position(node))
        mapping = {}
        for name in sorted(_own_bindings(function) - excluded):
            if name.startswith("__") or ("**" in keep and name in {a.arg for a in args.args + args.kwonlyargs}):
                continue
            spots = [names_at.get(position) for position in occurrences[name]]
            if not spots or any(spot is None or spot[0] != name for spot in spots):
                continue  # a use tokenize cannot see (inside an f-string): leave the name alone
            if prompt_end is not None and not any(start < prompt_end for _, start, _ in spots):
                continue
            mapping[name] = _fresh_variable_name(rng, taken)
            edits += [(start, end, mapping[name]) for _, start, end in spots]
        if not mapping:
            continue
        first = function.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            found = strings_at.get(position(first))
            body = _string_body(found[0].string) if found else None
            if body:
                literal, start = found
                inner = literal.string[body[0] : body[1]]
                for s, e, kind in _prose_regions(inner):
                    if kind == "text":
                        edits += _shift(_rename_text_edits(inner[s:e], mapping, code_like=False), start + body[0] + s)
        records.append({"function": function.name, "renamed": mapping})
    return edits, records


# ---- format helpers --------------------------------------------------------------------------------

_SPACED = frozenset(
    {
        "+",
        "-",
        "*",
        "/",
        "//",
        "%",
        "**",
        "==",
        "!=",
        "<",
        ">",
        "<=",
        ">=",
        "=",
        "+=",
        "-=",
        "*=",
        "/=",
        "->",
        ",",
        ":",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "&",
        "|",
        "^",
        "<<",
        ">>",
    }
)
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)
_LAYOUT = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER, tokenize.COMMENT)


def _format_options(source: str) -> list[tuple[int, int, str, list[str]]]:
    """Whitespace edits that keep `source`'s tokens: (start, end, kind, alternatives)."""
    toks = _tokens(source)
    if toks is None:
        return []
    options = []
    fstring_depth = 0  # Python 3.12+ tokenizes f-strings; spaces inside one can change its text
    for i, (tok, start, end) in enumerate(toks):
        fstring_depth += (tok.type == _FSTRING_START) - (tok.type == _FSTRING_END)
        previous = toks[i - 1][0] if i else None
        if tok.type in (tokenize.NEWLINE, tokenize.NL) and tok.string in ("\n", "\r\n"):
            if tok.type == tokenize.NEWLINE:
                options.append((end, end, "blank", [tok.string]))
            if previous is not None and previous.type != tokenize.COMMENT and previous.end[0] == tok.start[0]:
                options.append((start, start, "trailing", [" ", "  ", "\t"]))
        if i + 1 < len(toks):
            nxt, next_start, _ = toks[i + 1]
            if fstring_depth or tok.type in _LAYOUT or nxt.type in _LAYOUT or tok.end[0] != nxt.start[0]:
                continue
            spaced = [t.type == tokenize.OP and t.string in _SPACED for t in (tok, nxt)]
            if not any(spaced):
                continue
            gap = source[end:next_start]
            if gap.strip(" "):
                continue
            alternatives = [g for g in ("", " ") if g != gap]
            if tok.type == nxt.type == tokenize.OP:
                alternatives = [g for g in alternatives if g]  # never glue two operators
            if alternatives:
                options.append((end, next_start, "spacing", alternatives))
    return options


def _same_tokens(before: str, after: str) -> bool:
    def significant(source: str) -> list[tuple[int, str]] | None:
        toks = _tokens(source)
        if toks is None:
            return None
        return [
            (tok.type, tok.string if tok.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT) else "")
            for tok, _, _ in toks
            if tok.type != tokenize.NL
        ]

    return significant(before) is not None and significant(before) == significant(after)
