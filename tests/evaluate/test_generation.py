import pytest
import torch
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
