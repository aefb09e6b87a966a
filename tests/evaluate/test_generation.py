import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftcompare.evaluate.generation import SamplingSettings, decode_new_tokens, extract_body, generate, generation_tokens_per_s


@pytest.mark.parametrize(
    "text, body",
    [
        ("    return x + 1\n", "    return x + 1\n"),
        ("    return x + 1\ndef other():\n    pass\n", "    return x + 1\n"),
        ("    y = x\n\n    return y\nprint(y)\n", "    y = x\n\n    return y\n"),
        ("    return x\n# trailing comment", "    return x\n"),
        ("    return x", "    return x"),
    ],
)
def test_extract_body_stops_at_the_first_top_level_line(text, body):
    assert extract_body(text) == body


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base):
    directory, _ = tiny_base
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


def test_batched_greedy_generation_matches_one_prompt_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["def f(x):\n", 'def longer_name(values):\n    """Return the sum."""\n', "import os\n"]
    settings = SamplingSettings(n=1, do_sample=False, max_new_tokens=6, batch_size=8)
    batched, _ = generate(model, tokenizer, prompts, settings)
    for prompt, (generation,) in zip(prompts, batched):
        (alone,), _ = generate(model, tokenizer, [prompt], settings)
        assert generation == alone[0]
        assert generation.new_tokens <= 6


def test_sampling_returns_n_per_prompt_and_is_seeded(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(n=3, do_sample=True, temperature=1.0, max_new_tokens=5, batch_size=4, seed=7)
    first, _ = generate(model, tokenizer, ["def f(x):\n", "class A:\n"], settings)
    again, _ = generate(model, tokenizer, ["def f(x):\n", "class A:\n"], settings)
    assert [len(samples) for samples in first] == [3, 3]
    assert first == again


def test_decoding_cuts_at_eos_and_flags_the_budget(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    eos = tokenizer.eos_token_id
    body = tokenizer("    return x\n", add_special_tokens=False)["input_ids"]
    stopped = decode_new_tokens(tokenizer, body + [eos] + body, eos, budget=len(body) * 2 + 1)
    assert (stopped.text, stopped.new_tokens, stopped.hit_budget) == ("    return x\n", len(body) + 1, False)
    truncated = decode_new_tokens(tokenizer, body, eos, budget=len(body))
    assert truncated.hit_budget and truncated.text == "    return x\n"


def test_throughput_is_positive(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert generation_tokens_per_s(model, tokenizer, ["def f(x):\n"] * 2, new_tokens=3, repeats=1) > 0


def test_static_cache_generates_what_the_dynamic_cache_does(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["def f(x):\n", "import os\n"]
    dynamic, _ = generate(model, tokenizer, prompts, SamplingSettings(n=1, do_sample=False, max_new_tokens=5))
    static, _ = generate(model, tokenizer, prompts, SamplingSettings(n=1, do_sample=False, max_new_tokens=5, cache="static"))
    assert static == dynamic


def test_unknown_cache_layout_is_refused():
    from ftcompare.evaluate.generation import cache_kwargs

    assert cache_kwargs("static", False) == {"cache_implementation": "static", "disable_compile": True}
    assert cache_kwargs("static", True) == {"cache_implementation": "static", "disable_compile": False}
    with pytest.raises(ValueError, match="cache"):
        cache_kwargs("paged", False)
    with pytest.raises(ValueError, match="static"):
        cache_kwargs("dynamic", True)


def test_compiled_generation_on_a_cpu_is_refused_not_silently_skipped(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="CUDA"):
        generate(model, tokenizer, ["x"], SamplingSettings(n=1, do_sample=False, cache="static", compile=True))


def test_batches_are_longest_first_and_the_last_is_filled_only_when_asked():
    from ftcompare.evaluate.generation import length_batches

    lengths = [1, 9, 4, 12, 1]
    assert length_batches(lengths, 2, fill=False) == [[3, 1], [2, 0], [4]]
    assert length_batches(lengths, 2, fill=True) == [[3, 1], [2, 0], [4, 4]]
    assert length_batches([], 2, fill=True) == []
    # at most rows_for(the batch's longest) rows: one for lengths above 9 (the static decoder's token budget)
    assert length_batches(lengths, 2, fill=False, rows_for=lambda longest: 1 if longest > 9 else 2) == [[3], [1, 2], [0, 4]]


def test_results_come_back_in_prompt_order_whatever_the_batching(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["import os\n", "def longer_name(values):\n    return values\n", "x", "class A:\n    pass\n"]
    settings = SamplingSettings(n=1, do_sample=False, max_new_tokens=4, batch_size=1)
    one_at_a_time, _ = generate(model, tokenizer, prompts, settings)
    for prompt, result in zip(prompts, one_at_a_time):
        assert generate(model, tokenizer, [prompt], settings)[0][0] == result
    batched, _ = generate(model, tokenizer, prompts, SamplingSettings(n=1, do_sample=False, max_new_tokens=4, batch_size=3))
    assert batched == one_at_a_time


PROMPTS = ["def f(x):\n", 'def longer_name(values):\n    """Return the sum."""\n', "import os\n", "class A:\n"]


@pytest.mark.parametrize("round_tokens", [1, 3, 4])
def test_decoding_in_rounds_gives_the_greedy_answers_of_one_round(model_and_tokenizer, round_tokens):
    model, tokenizer = model_and_tokenizer
    whole = SamplingSettings(n=1, do_sample=False, max_new_tokens=7, batch_size=3)
    one_round, _ = generate(model, tokenizer, PROMPTS, whole)
    rounds, _ = generate(model, tokenizer, PROMPTS, SamplingSettings(**{**whole.__dict__, "round_tokens": round_tokens}))
    assert rounds == one_round
    assert all(g.new_tokens <= 7 for (g,) in rounds)
    assert max(g.new_tokens for (g,) in rounds) > round_tokens  # some answer did continue into a later round


def test_rounds_end_sequences_at_eos_and_at_the_budget():
    from ftcompare.evaluate.generation import _Sequence, extend

    class Tokenizer:
        eos_token_id, pad_token_id = 2, 0

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(96 + t) for t in ids)

    settings = SamplingSettings(n=1, do_sample=False, max_new_tokens=6, stop_strings=("cd",))
    running = _Sequence(0, [5])
    extend(running, [5, 6, 7], 3, Tokenizer(), settings)
    assert (running.new_ids, running.done) == ([5, 6, 7], False)
    extend(running, [8, 2, 0], 3, Tokenizer(), settings)
    assert (running.new_ids, running.done) == ([5, 6, 7, 8, 2], True)  # cut after EOS, padding dropped
    budget = _Sequence(0, [5], new_ids=[5, 6, 7])
    extend(budget, [5, 6, 7], 3, Tokenizer(), settings)
    assert budget.done and len(budget.new_ids) == 6
    stopped = _Sequence(0, [5])
    extend(stopped, [3, 4, 0], 3, Tokenizer(), settings)  # "cd": generate stopped it and padded the rest
    assert (stopped.new_ids, stopped.done) == ([3, 4], True)


def test_sampling_in_rounds_is_seeded_and_gives_n_per_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(n=3, do_sample=True, max_new_tokens=6, batch_size=4, seed=3, round_tokens=2)
    first, _ = generate(model, tokenizer, PROMPTS[:2], settings)
    assert [len(samples) for samples in first] == [3, 3]
    assert generate(model, tokenizer, PROMPTS[:2], settings)[0] == first


def test_progress_counts_each_prompt_once_when_all_its_samples_are_done(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    counted = []
    settings = SamplingSettings(n=2, do_sample=True, max_new_tokens=5, batch_size=3, round_tokens=2)
    generate(model, tokenizer, PROMPTS, settings, on_batch=counted.append)
    assert sum(counted) == len(PROMPTS)


def test_continuous_batching_gives_the_greedy_answers_of_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(n=1, do_sample=False, max_new_tokens=5, batch_size=4)
    expected, _ = generate(model, tokenizer, PROMPTS[:3], settings)
    continuous, _ = generate(model, tokenizer, PROMPTS[:3], SamplingSettings(**{**settings.__dict__, "backend": "continuous"}))
    assert continuous == expected
    with pytest.raises(ValueError, match="round_tokens"):
        generate(
            model, tokenizer, PROMPTS[:1], SamplingSettings(**{**settings.__dict__, "backend": "continuous", "round_tokens": 2})
        )
