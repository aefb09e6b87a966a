"""LLM-as-judge scoring: a judge model reads a rubric prompt and answers with a score in [0, 1], as in the
comparison of full-parameter and LoRA tuning on instruction data of Sun et al. 2023 (arXiv 2304.08109),
which scores each answer from 0 to 1 with a judge at temperature near 0 and reports the macro average over
categories.

The judge is an **endpoint** (any OpenAI-compatible `/chat/completions`: vLLM's `vllm serve`, SGLang, TGI,
llama.cpp's server, OpenAI) or a **local** model generating through ftcompare's own transformers path
(`ftcompare.evaluate.generation.generate`). The rubric is a Jinja template over `instruction`, `answer`,
`reference` (None where the item has none) and `category`; its text is stored once with the suite's metrics
and its sha256 in every per-sample record, with the judge's identity, temperature and seed.

Every answer gets one verdict (`judge_verdict`):

- "scored": a score in [0, 1] was read from the reply (`judge_score`); only these count in the means.
- "unparseable": no score could be read; counted, excluded from the means, never scored 0.
- "out_of_range": a number was read but lies outside [0, 1] (a judge answering on its own scale, "7");
  invalid, counted separately and excluded. Never clamped: clamping 7 to 1 would turn a misunderstanding of
  the rubric into a top score. The number is kept (`judge_value`).
- "error": the judge could not be asked (a timeout or HTTP error after the retries, a reply that is not an
  OpenAI response); counted separately and excluded, the reason in `judge_error`. A suite whose every request
  failed is an error of the run (the endpoint is down or refuses us), not a table of errors.

How a score is read (`parse_judge_reply`), after dropping `<think>…</think>` reasoning: the last JSON object
in the reply with a numeric "score" (`{"score": 0.8}`, what the default rubric asks for and what an endpoint's
structured output enforces); else the last "score: X" ("Score = 0.75", "**Score:** 1"), where X may be a
fraction "a/b" read as a/b, unless the reply was cut by `max_tokens` right after X (digits may be missing);
else unparseable.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

from jinja2 import Environment, StrictUndefined, TemplateSyntaxError, meta
from pydantic import Field, TypeAdapter, ValidationError, field_validator

from ftcompare.schema import ConfigError, InputError, Strict

if TYPE_CHECKING:  # data/ imports this module (a suite's judge is configured here): no import back at load
    from ftcompare.data.problems import Problem

VERDICTS = ("scored", "unparseable", "out_of_range", "error")
RUBRIC_VARIABLES = ("instruction", "answer", "reference", "category")

DEFAULT_RUBRIC = """\
You are grading an answer to an instruction. Judge whether the answer does what the instruction asks and \
how correct, complete and helpful it is{% if reference %}, taking the reference answer as the standard{% endif %}.

Category: {{ category }}

Instruction:
{{ instruction }}

{% if reference %}
Reference answer:
{{ reference }}

{% endif %}
Answer to grade:
{{ answer }}

Give a score between 0 and 1: 1 for a fully correct and helpful answer, 0 for a wrong, empty or irrelevant \
one, a value in between for a partly correct one. Reply with a JSON object and nothing else: \
{"score": <a number between 0 and 1>}
"""

# the structured output an endpoint is asked for with `structured_output: true` (OpenAI's response_format)
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["score"],
    "additionalProperties": False,
}

# trim_blocks: a line that holds only a block tag ({% if reference %}) leaves no blank line behind
_TEMPLATES = Environment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True, autoescape=False)
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SCORE_LINE = re.compile(rf"score\W{{0,6}}?(?:is\s*|[:=]\s*)\**\s*({_NUMBER})(?:\s*/\s*({_NUMBER}))?", re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def check_rubric(rubric: str | None) -> str | None:
    """A field check: the rubric is a Jinja template that uses `instruction` and `answer`, and no variable
    other than those and `reference` and `category`."""
    if rubric is None:
        return None
    try:
        used = meta.find_undeclared_variables(_TEMPLATES.parse(rubric))
    except TemplateSyntaxError as error:
        raise ValueError(f"not a valid Jinja template (line {error.lineno}: {error.message})") from None
    unknown = sorted(used - set(RUBRIC_VARIABLES))
    if unknown:
        raise ValueError(f"unknown variables {unknown}; a rubric may use {list(RUBRIC_VARIABLES)}")
    missing = [name for name in ("instruction", "answer") if name not in used]
    if missing:
        raise ValueError(f"the rubric must show the judge {' and '.join(missing)} ({{{{ {missing[0]} }}}})")
    return rubric


class JudgeSettings(Strict):
    """What every judge shares: the rubric and how the judge decodes."""

    rubric: str | None = Field(
        default=None,
        description="The rubric prompt, a Jinja template (trim_blocks) over instruction, answer, reference (None where "
        "the item has none) and category; it must ask for a score in [0, 1] (None: the built-in rubric, "
        'ftcompare.evaluate.judge.DEFAULT_RUBRIC, which asks for {"score": x}).',
    )
    temperature: float = Field(default=0.0, ge=0, description="The judge's sampling temperature (0: greedy).")
    seed: int = Field(default=0, description="The judge's sampling seed (sent to an endpoint; seeds a local judge).")
    max_tokens: int = Field(default=256, gt=0, description="Tokens the judge may write per verdict.")

    _rubric = field_validator("rubric")(check_rubric)

    @property
    def rubric_text(self) -> str:
        return self.rubric if self.rubric is not None else DEFAULT_RUBRIC


class EndpointJudge(JudgeSettings):
    """A judge behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, TGI, llama.cpp, OpenAI)."""

    kind: Literal["endpoint"] = Field(default="endpoint", description="Selects this judge: an OpenAI-compatible endpoint.")
    url: str = Field(
        pattern=r"^https?://",
        description="The API's base URL, to which /chat/completions is appended, e.g. http://127.0.0.1:8000/v1.",
    )
    model: str = Field(description="The model name the endpoint serves, e.g. meta-llama/Meta-Llama-3-70B-Instruct.")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The name of the environment variable that holds the API key (sent as a bearer token); the key "
        "itself never goes in a config or a record. Checked when the config loads (None: no key).",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for one reply before it counts as failed.")
    retries: int = Field(
        default=2, ge=0, description="Further attempts after a timeout, a connection error or HTTP 429/5xx (1 s, 2 s, … apart)."
    )
    concurrency: int = Field(default=4, gt=0, description="Requests in flight at once.")
    structured_output: bool = Field(
        default=False,
        description='Ask for JSON matching {"score": number in [0, 1]} (OpenAI\'s response_format json_schema; vLLM, '
        "SGLang and OpenAI enforce it), so that every reply parses.",
    )

    @field_validator("api_key_env")
    @classmethod
    def _key_is_set(cls, name: str | None) -> str | None:
        if name is not None and not os.environ.get(name):
            raise ValueError(f"environment variable {name} is not set (the judge's API key is read from it)")
        return name


class LocalJudge(JudgeSettings):
    """A judge model run here through transformers (ftcompare's own generation path)."""

    kind: Literal["local"] = Field(default="local", description="Selects this judge: a local model.")
    model: str = Field(
        description="The judge model, as base.model names one: a local directory, a hub id, a registered name or "
        "builtin:tiny-code (pre-trained as the study's base.builtin says)."
    )
    revision: str | None = Field(default=None, description="The hub revision of a hub model (None: the default branch).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="The dtype the judge is loaded in; auto: bfloat16 on a GPU, float32 on a CPU."
    )
    batch_size: int = Field(default=16, gt=0, description="Verdicts generated per batch.")


JUDGE_KINDS = ("endpoint", "local")
JudgeConfig = Annotated[Union[EndpointJudge, LocalJudge], Field(discriminator="kind")]


# --- the rubric and the reply ---


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees of one answer."""

    category: str
    instruction: str
    answer: str
    reference: str | None = None


@dataclass(frozen=True)
class Verdict:
    verdict: str  # one of VERDICTS
    score: float | None = None  # in [0, 1] when verdict is "scored"
    value: float | None = None  # the number read (also when out of range)


def render_rubric(rubric: str, item: JudgeItem) -> str:
    """The judge's prompt for one answer."""
    return _TEMPLATES.from_string(rubric).render(
        instruction=item.instruction, answer=item.answer, reference=item.reference or None, category=item.category
    )


def rubric_sha256(rubric: str) -> str:
    return hashlib.sha256(rubric.encode("utf-8")).hexdigest()


def parse_judge_reply(text: str, cut: bool = False) -> Verdict:
    """The verdict in a judge's reply (the order of the module docstring). `cut`: the reply was cut by the token
    budget, so a number at its very end may be missing digits ("0.5" of "0.55"), and is not read."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    value = _json_score(text)
    if value is None:
        matches = list(_SCORE_LINE.finditer(text))
        if matches and not (cut and not text[matches[-1].end() :].strip()):
            number, denominator = float(matches[-1].group(1)), matches[-1].group(2)
            if denominator is not None:
                value = number / float(denominator) if float(denominator) > 0 else None
            else:
                value = number
    if value is None or not math.isfinite(value):
        return Verdict("unparseable")
    if 0 <= value <= 1:
        return Verdict("scored", score=value, value=value)
    return Verdict("out_of_range", value=value)


def _json_score(text: str) -> float | None:
    """The "score" of the last JSON object in `text` that has a numeric one."""
    candidates = [text.strip()] + [match.group(0) for match in _JSON_OBJECT.finditer(text)][::-1]
    for candidate in candidates:
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        score = parsed.get("score") if isinstance(parsed, dict) else None
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            return float(score)
    return None


# --- asking the judge ---


@dataclass(frozen=True)
class JudgeReply:
    text: str  # the reply's content ("" when the request failed)
    error: str | None = None  # why the judge could not be asked
    attempts: int = 1
    finish_reason: str | None = None  # "stop", or "length" when max_tokens cut the reply


class _Retry(Exception):
    """A failure worth another attempt (timeout, connection, HTTP 429 or 5xx)."""

    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


def api_key(settings: EndpointJudge) -> str | None:
    """The key from the environment variable the config names; InputError naming the variable if it is unset."""
    if settings.api_key_env is None:
        return None
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise InputError("judge.api_key_env", f"environment variable {settings.api_key_env} is not set (the judge's API key)")
    return key


def ask_endpoint(settings: EndpointJudge, prompts: Sequence[str]) -> list[JudgeReply]:
    """One reply per prompt from the endpoint, `concurrency` requests at a time, in the prompts' order. The
    first is asked alone: RuntimeError if it fails after its retries (an endpoint that is down or refuses us
    fails the evaluation at once, not after every request has spent its retries)."""
    key = api_key(settings)
    if not prompts:
        return []
    first = _ask_once(settings, key, prompts[0])
    if first.error:
        raise RuntimeError(
            f"judge {settings.model} at {settings.url}: the first request failed after {first.attempts} attempt(s): {first.error}"
        )
    with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        return [first, *pool.map(lambda prompt: _ask_once(settings, key, prompt), prompts[1:])]


def _ask_once(settings: EndpointJudge, key: str | None, prompt: str) -> JudgeReply:
    body = {
        "model": settings.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": settings.temperature,
        "seed": settings.seed,
        "max_tokens": settings.max_tokens,
    }
    if settings.structured_output:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCORE_SCHEMA}}
    request = urllib.request.Request(
        settings.url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    error = ""
    for attempt in range(1, settings.retries + 2):
        try:
            text, finish_reason = _post(request, settings.timeout_s)
            return JudgeReply(text, attempts=attempt, finish_reason=finish_reason)
        except _Retry as failure:
            error = str(failure)
            if attempt <= settings.retries:
                time.sleep(failure.wait_s if failure.wait_s is not None else min(2.0 ** (attempt - 1), 30.0))
        except ValueError as failure:  # an answer that is not an OpenAI response, an HTTP error not worth retrying
            return JudgeReply("", error=str(failure), attempts=attempt)
    return JudgeReply("", error=error, attempts=settings.retries + 1)


def _post(request: urllib.request.Request, timeout_s: float) -> tuple[str, str | None]:
    """(content, finish_reason) of one chat completion; _Retry or ValueError saying why there is none."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as failure:
        detail = failure.read(300).decode("utf-8", "replace").strip()
        message = f"HTTP {failure.code} {failure.reason}" + (f": {detail}" if detail else "")
        if failure.code == 429 or failure.code >= 500:
            retry_after = failure.headers.get("Retry-After", "")
            raise _Retry(message, float(retry_after) if retry_after.isdigit() and int(retry_after) <= 60 else None) from None
        raise ValueError(message) from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as failure:
        reason = getattr(failure, "reason", failure)
        kind = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "connection failed"
        raise _Retry(f"{kind} after at most {timeout_s:g} s: {reason}") from None
    try:
        choice = json.loads(payload)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"not an OpenAI chat completion: {payload[:200].decode('utf-8', 'replace')!r}") from None
    return content if isinstance(content, str) else "", choice.get("finish_reason")


@functools.lru_cache(maxsize=1)  # one judge per process: every run of a study is judged by the same weights
def _local_model(model: str, revision: str | None, dtype: str, device: str, builtin):
    import torch

    from ftcompare.config import BaseModelConfig, BuiltinPretraining
    from ftcompare.console import console
    from ftcompare.models.base import load_model, load_tokenizer, resolve_base

    config = BaseModelConfig(model=model, revision=revision, dtype=dtype, builtin=builtin or BuiltinPretraining())
    source = resolve_base(config, torch.device(device), console)
    return load_model(source, torch.device(device)).eval(), load_tokenizer(source), source


def ask_local(settings: LocalJudge, prompts: Sequence[str], device: str = "cpu", builtin=None) -> tuple[list[JudgeReply], dict]:
    """One reply per prompt from a local judge (through the tokenizer's chat template where it has one), and
    where its weights came from."""
    from ftcompare.evaluate.generation import SamplingSettings, generate

    model, tokenizer, source = _local_model(settings.model, settings.revision, settings.dtype, device, builtin)
    if getattr(tokenizer, "chat_template", None):
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    sampling = SamplingSettings(
        n=1,
        do_sample=settings.temperature > 0,
        temperature=settings.temperature or 1.0,
        max_new_tokens=settings.max_tokens,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    generations, _ = generate(model, tokenizer, list(prompts), sampling)
    replies = [JudgeReply(g[0].text, finish_reason="length" if g[0].hit_budget else "stop") for g in generations]
    weights = {"path": source.path, "dtype": str(source.dtype), "provenance": source.provenance}
    return replies, weights


def judge_identity(settings: EndpointJudge | LocalJudge) -> dict:
    """Who judged: the endpoint and its model, or the local model as configured."""
    if isinstance(settings, EndpointJudge):
        return {"kind": "endpoint", "url": settings.url, "model": settings.model}
    return {"kind": "local", "model": settings.model, "revision": settings.revision}


def judge_answers(
    settings: EndpointJudge | LocalJudge, items: Sequence[JudgeItem], *, device: str = "cpu", builtin=None
) -> tuple[list[dict], dict]:
    """The judge's fields for each item's record, and the judge's record (identity, rubric text and sha256,
    temperature, seed, settings; a local judge's weights), stored once per suite. RuntimeError when every
    request failed."""
    rubric = settings.rubric_text
    digest = rubric_sha256(rubric)
    identity = judge_identity(settings)
    prompts = [render_rubric(rubric, item) for item in items]
    started = time.perf_counter()
    weights: dict = {}
    if isinstance(settings, EndpointJudge):
        replies = ask_endpoint(settings, prompts)
    else:
        replies, weights = ask_local(settings, prompts, device, builtin)
    if replies and all(reply.error for reply in replies):
        raise RuntimeError(f"judge {identity}: every request failed; the first: {replies[0].error}")
    fields = []
    for reply in replies:
        verdict = Verdict("error") if reply.error else parse_judge_reply(reply.text, cut=reply.finish_reason == "length")
        fields.append(
            {
                "judge": identity,
                "judge_rubric_sha256": digest,
                "judge_temperature": settings.temperature,
                "judge_seed": settings.seed,
                "judge_text": reply.text,
                "judge_verdict": verdict.verdict,
                "judge_score": verdict.score,
                "judge_value": verdict.value,
                "judge_error": reply.error,
                "judge_attempts": reply.attempts,
                "judge_finish_reason": reply.finish_reason,
            }
        )
    record = {
        **identity,
        "rubric": rubric,
        "rubric_sha256": digest,
        **settings.model_dump(mode="json", exclude={"rubric", "kind"}),
        **({"weights": weights} if weights else {}),
        "judge_s": time.perf_counter() - started,
    }
    return fields, record


def judge_records(
    records: list[dict], problems: Sequence[Problem], n: int, settings: EndpointJudge | LocalJudge, *, device: str, builtin=None
) -> tuple[list[dict], dict]:
    """A judged suite's sample records (`n` per problem, in order) with the judge's fields, the category, and
    the verdict as `status`, and the judge's record. A judged record keeps its answer (`extracted_code`), not a
    program: nothing runs."""
    per_record = [p for p in problems for _ in range(n)]
    items = [
        JudgeItem(p.family, p.meta["instruction"], r["extracted_code"], p.meta.get("reference"))
        for p, r in zip(per_record, records, strict=True)
    ]
    fields, judge = judge_answers(settings, items, device=device, builtin=builtin)
    scored = [
        {**{k: v for k, v in r.items() if k != "program"}, "category": p.family, **f, "status": f["judge_verdict"]}
        for p, r, f in zip(per_record, records, fields, strict=True)
    ]
    return scored, judge


# --- what the verdicts add up to ---


def verdict_counts(records: Sequence[dict]) -> dict[str, int]:
    return {verdict: sum(r["judge_verdict"] == verdict for r in records) for verdict in VERDICTS}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def judged_metrics(records: Sequence[dict]) -> dict:
    """Per category: the mean score (each item's scored samples averaged first, then the items), its item
    and verdict counts; the macro average over the categories that have a mean, and the mean over all items.
    Verdicts other than "scored" are counted, never averaged in."""
    by_category: dict[str, dict[str, list[float]]] = {}
    records_by_category: dict[str, list[dict]] = {}
    for record in records:
        items = by_category.setdefault(record["category"], {})
        scores = items.setdefault(record["task_id"], [])
        if record["judge_verdict"] == "scored":
            scores.append(record["judge_score"])
        records_by_category.setdefault(record["category"], []).append(record)
    per_problem = {
        task: _mean(scores) for items in by_category.values() for task, scores in items.items() if scores
    }  # items without a scored sample have no score, not 0
    per_category = {}
    for category, items in by_category.items():
        item_means = [_mean(scores) for scores in items.values() if scores]
        per_category[category] = {
            "mean": _mean(item_means),
            "items": len(items),
            "items_scored": len(item_means),
            **verdict_counts(records_by_category[category]),
        }
    means = [c["mean"] for c in per_category.values() if c["mean"] is not None]
    return {
        "scoring": "judge",
        "macro_mean": _mean(means),
        "micro_mean": _mean(list(per_problem.values())),
        "categories": len(per_category),
        "categories_scored": len(means),
        "per_category": per_category,
        "verdict_counts": verdict_counts(records),
        "per_problem_score": per_problem,
    }


def load_judge_config(path: Path) -> EndpointJudge | LocalJudge:
    """A judge section from its own YAML file (`ftcompare judge-calibrate --judge-config`); ConfigError naming
    the file and the field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "judge config not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(path, f"cannot read it as YAML: {' '.join(str(error).split())}") from None
    try:
        return TypeAdapter(JudgeConfig).validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if part not in JUDGE_KINDS) or None
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise ConfigError(path, message, field=field) from None
