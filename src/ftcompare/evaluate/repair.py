"""Program-repair metrics: how closely a candidate's edits match the reference fix's (the repair rate is pass@1).

The reported F1 is token level (`token_f1`); the line-level one is kept as `line_edit_f1`. Both compare
edits, not whole programs: a candidate that returns the buggy program unchanged shares all but a token or
two with the fix, so a bag-of-tokens F1 of whole programs (SQuAD-style) would score it about 0.99.

Definitions (token level):

- A program's *code tokens* are the tokens Python's `tokenize` reads in its code (the source before the
  trailing docstring block, defined below), each as its text, except INDENT, DEDENT and NEWLINE, which
  are the markers "<INDENT>", "<DEDENT>", "<NEWLINE>": block structure counts, the whitespace that spells
  it does not, so a program re-indented from four spaces to two has the same tokens. Comments, blank and
  continuation lines (NL) and the end marker are dropped. Source that does not tokenize (an unclosed
  bracket or string, inconsistent dedent) falls back to its runs of word characters and its other
  non-space characters, one each.
- token_f1(buggy, candidate, reference): C = the multiset of token edits difflib.SequenceMatcher (autojunk
  off) finds from the buggy program's code tokens to the candidate's, ("-", removed token) and ("+",
  added token); R = the same from buggy to reference; precision, recall, f1 and the empty-set conventions
  as for line_edit_f1 below. Example: `total -= x` fixed as `total += x` is C = R = {-"-=", +"+="}.

Definitions (line level):

- A program's *code lines* are its lines before a trailing docstring block, each with trailing whitespace
  stripped, blank lines dropped; indentation and comments are kept (they are code). QuixBugs appends the
  program's description as a module-level string to every buggy program, and some correct programs
  carry one of alternative solutions; neither is part of the fix. A trailing docstring block is the run
  of bare string statements that ends the module (found with `ast`; for source that does not parse, a
  last line ending in triple quotes and the nearest line before it that starts with them at column 0).
- The *edits* from program A to program B are the lines difflib.SequenceMatcher (autojunk off) aligns
  as changed between A's and B's code lines: each removed line of A as ("-", text) and each added line
  of B as ("+", text), a multiset (a line edited twice counts twice; positions are not compared, so
  edits at different places with the same text match).
- line_edit_f1(buggy, candidate, reference): C = edits(buggy → candidate), R = edits(buggy → reference),
  I = |C ∩ R| (multiset intersection). precision = I/|C|, recall = I/|R|,
  f1 = 2·I/(|C| + |R|) (the harmonic mean of precision and recall, 0 when I = 0).
  Empty sets: C and R both empty → 1, 1, 1 (the candidate made exactly the reference's edits: none);
  otherwise a 0/0 ratio is 0 (a candidate that changes nothing has precision 0, recall 0, f1 0).
  Example: the right line fixed with other text gives C = {-old, +mine}, R = {-old, +ref}: 1/2, 1/2, 1/2.
"""

from __future__ import annotations

import ast
import difflib
import io
import re
import tokenize
from collections import Counter
from fractions import Fraction

_TRIPLE_QUOTES = ('"""', "'''")


def code_lines(source: str) -> list[tuple[int, str]]:
    """(1-based line number in `source`, text without trailing whitespace) of each non-blank line before
    the trailing docstring block."""
    lines = source.splitlines()[: _code_end(source)]
    return [(number, line.rstrip()) for number, line in enumerate(lines, start=1) if line.strip()]


def changed_lines(before: str, after: str) -> list[tuple[str, int, str]]:
    """The edits from `before` to `after` in diff order: ("-", line number in before, text) for a removed
    code line, ("+", line number in after, text) for an added one (see the module docstring)."""
    old, new = code_lines(before), code_lines(after)
    matcher = difflib.SequenceMatcher(None, [text for _, text in old], [text for _, text in new], autojunk=False)
    edits = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            edits += [("-", number, text) for number, text in old[i1:i2]]
        if tag in ("replace", "insert"):
            edits += [("+", number, text) for number, text in new[j1:j2]]
    return edits


def code_tokens(source: str) -> list[str]:
    """The code tokens of `source` in order (see the module docstring)."""
    code = "".join(source.splitlines(keepends=True)[: _code_end(source)])
    try:
        found = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return re.findall(r"\w+|\S", code)
    tokens = []
    for token in found:
        if token.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE):
            tokens.append(f"<{tokenize.tok_name[token.type]}>")
        elif token.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER) and token.string.strip():
            tokens.append(token.string)
    return tokens


def changed_tokens(before: str, after: str) -> list[tuple[str, str]]:
    """The token edits from `before` to `after` in diff order: ("-", token) removed, ("+", token) added."""
    old, new = code_tokens(before), code_tokens(after)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    edits = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            edits += [("-", token) for token in old[i1:i2]]
        if tag in ("replace", "insert"):
            edits += [("+", token) for token in new[j1:j2]]
    return edits


def token_f1(buggy: str, candidate: str, reference: str) -> dict[str, float]:
    """{"precision", "recall", "f1"} of the candidate's token edits to the buggy program against the
    reference fix's, as multisets of ("-" | "+", token); conventions in the module docstring."""
    return _edit_f1(Counter(changed_tokens(buggy, candidate)), Counter(changed_tokens(buggy, reference)))


def line_edit_f1(buggy: str, candidate: str, reference: str) -> dict[str, float]:
    """{"precision", "recall", "f1"} of the candidate's line edits to the buggy program against the
    reference fix's, as multisets of ("-" | "+", line text); conventions in the module docstring."""
    made = Counter((sign, text) for sign, _, text in changed_lines(buggy, candidate))
    wanted = Counter((sign, text) for sign, _, text in changed_lines(buggy, reference))
    return _edit_f1(made, wanted)


REPAIR_F1_KEYS = ("token_precision", "token_recall", "token_f1", "line_edit_precision", "line_edit_recall", "line_edit_f1")


def repair_f1_scores(buggy: str, candidate: str, reference: str) -> dict[str, float]:
    """A candidate fix's per-sample scores, keyed by REPAIR_F1_KEYS: token_f1's (the reported F1) and
    line_edit_f1's precision, recall and F1."""
    return {
        **{f"token_{key}": value for key, value in token_f1(buggy, candidate, reference).items()},
        **{f"line_edit_{key}": value for key, value in line_edit_f1(buggy, candidate, reference).items()},
    }


def _edit_f1(made: Counter, wanted: Counter) -> dict[str, float]:
    n_made, n_wanted = sum(made.values()), sum(wanted.values())
    if n_made == n_wanted == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    common = sum((made & wanted).values())
    return {
        "precision": float(Fraction(common, n_made)) if n_made else 0.0,
        "recall": float(Fraction(common, n_wanted)) if n_wanted else 0.0,
        "f1": float(Fraction(2 * common, n_made + n_wanted)),
    }


def _code_end(source: str) -> int:
    """How many lines of `source` come before its trailing docstring block."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return _code_end_unparsed(source.splitlines())
    end = None
    while (
        body
        and isinstance(body[-1], ast.Expr)
        and isinstance(body[-1].value, ast.Constant)
        and isinstance(body[-1].value.value, str)
    ):
        end = body.pop().lineno - 1
    return len(source.splitlines()) if end is None else end


def _code_end_unparsed(lines: list[str]) -> int:
    """_code_end for source that does not parse: a trailing block whose last non-blank line starts at
    column 0 and ends with triple quotes, opened by the nearest line before it starting with them."""
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    if last < 0:
        return 0
    text = lines[last].rstrip()
    quote = next((q for q in _TRIPLE_QUOTES if text.endswith(q)), None)
    if quote is None or text[:1].isspace():  # indented: the end of a function's docstring, not the module's
        return len(lines)
    if text.startswith(quote) and len(text) >= 6:  # a one-line docstring
        return last
    for index in range(last - 1, -1, -1):
        if lines[index].startswith(quote):
            return index
    return len(lines)
