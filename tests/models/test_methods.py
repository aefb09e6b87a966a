import pytest
import torch
from peft import PeftModel

from ftcompare.matrix import RunSpec
from ftcompare.models.methods import apply_method, load_tuned, method_for, method_record, save_tuned
from ftcompare.models.weights import adapted_weight_names, dequantize_4bit, merge_adapter, quantize_4bit, quantized_base_weights
from ftcompare.train.loop import TrainSettings, epoch_batches, train
from tests.helpers import copy_examples, tiny_llama

INPUT = torch.tensor([[1, 5, 5, 7, 3]])


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_run(rank=4, targets="all-linear"):
    return RunSpec(run_id="lora", method="lora", seed=0, lr=1e-2, rank=rank, alpha=2 * rank, target_modules=targets)


def trained_lora(dtype=torch.float32, targets="all-linear"):
    model = apply_method(tiny_llama(dtype=dtype), lora_run(targets=targets))
    train(model, epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0), TrainSettings(lr=1e-2, steps=5))
    return model


def test_full_fine_tuning_trains_every_parameter():
    model = apply_method(tiny_llama(), RunSpec(run_id="full", method="full", seed=0, lr=1e-3))
    assert all(p.requires_grad for p in model.parameters())


def test_lora_trains_only_adapters_and_saves_a_standard_peft_adapter(tmp_path):
    model = trained_lora()
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    expected = model(input_ids=INPUT).logits
    save_tuned(model, tmp_path, lora_run())
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(reloaded(input_ids=INPUT).logits, expected)


def test_adapters_stay_in_the_base_dtype():
    model = apply_method(tiny_llama(dtype=torch.bfloat16), lora_run())
    dtypes = {p.dtype for name, p in model.named_parameters() if "lora_" in name}
    assert dtypes == {torch.bfloat16}


def test_merging_keeps_the_function_and_changes_the_weights():
    model = trained_lora()
    unmerged = model(input_ids=INPUT).logits
    base_q = tiny_llama().model.layers[0].self_attn.q_proj.weight
    merged = merge_adapter(model)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(merged(input_ids=INPUT).logits, unmerged, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, base_q)


def test_merge_adapter_leaves_a_plain_model_alone():
    model = tiny_llama()
    assert merge_adapter(model) is model


@pytest.mark.parametrize("targets, expected_per_layer", [("all-linear", 7), (["q_proj", "v_proj"], 2)])
def test_adapted_weight_names_follow_the_targets(targets, expected_per_layer):
    names = adapted_weight_names(tiny_llama(), targets)
    assert len(names) == 2 * expected_per_layer
    assert "lm_head.weight" not in names
    assert all(name.endswith(".weight") for name in names)


# --- every adapter kind: build, train, save, reload -------------------------------------------------

ADAPTER_KINDS = ["lora", "qlora", "dora", "rslora", "pissa"]


def adapter_run(method, rank=4, targets="all-linear"):
    return RunSpec(run_id=method, method=method, seed=0, lr=1e-2, rank=rank, alpha=2 * rank, target_modules=targets)


def train_steps(model, steps=3):
    train(
        model, epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0), TrainSettings(lr=1e-2, steps=steps)
    )
    return model.eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@pytest.mark.parametrize("method", ADAPTER_KINDS)
def test_every_adapter_kind_trains_saves_and_reloads_on_a_fresh_base(method, tmp_path):
    run = adapter_run(method)
    model = train_steps(apply_method(tiny_llama(), run))
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    expected = logits(model)
    assert not torch.allclose(expected, logits(tiny_llama()), atol=1e-4)  # the adapter changed the function
    save_tuned(model, tmp_path, run)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()

    torch.testing.assert_close(logits(load_tuned(tiny_llama(), run, tmp_path)), expected)
    # a plain PEFT load on the base the adapter applies to (for qlora: the fresh base quantized first)
    torch.testing.assert_close(
        logits(PeftModel.from_pretrained(method_for(run.method).prepare_base(tiny_llama(), run), tmp_path)), expected
    )


def test_load_tuned_restores_the_full_fine_tuned_model(tmp_path):
    run = RunSpec(run_id="full", method="full", seed=0, lr=1e-3)
    model = train_steps(apply_method(tiny_llama(), run))
    save_tuned(model, tmp_path, run)
    torch.testing.assert_close(logits(load_tuned(tiny_llama(), run, tmp_path)), logits(model))


@pytest.mark.parametrize("method, expected", [("lora", 8 / 4), ("rslora", 8 / 4**0.5)])
def test_scaling_is_alpha_over_r_or_over_sqrt_r_for_rslora(method, expected):
    run = adapter_run(method, rank=4)
    assert run.scaling == pytest.approx(expected)
    layers = lora_layers(apply_method(tiny_llama(), run))
    assert layers and all(layer.scaling["default"] == pytest.approx(expected) for layer in layers.values())


def test_dora_adds_one_trainable_magnitude_per_output_row():
    lora, dora = apply_method(tiny_llama(), adapter_run("lora")), apply_method(tiny_llama(), adapter_run("dora"))
    magnitudes = {n: p for n, p in dora.named_parameters() if "lora_magnitude_vector" in n}
    layers = lora_layers(dora)
    assert len(magnitudes) == len(layers) == 14 and all(p.requires_grad for p in magnitudes.values())
    rows = sum(layer.get_base_layer().out_features for layer in layers.values())
    assert trainable(dora) - trainable(lora) == rows == sum(p.numel() for p in magnitudes.values())
    assert not any("magnitude" in n for n, _ in lora.named_parameters())


def test_trainable_parameters_match_what_the_loop_reports():
    model = apply_method(tiny_llama(), adapter_run("lora"))
    count = trainable(model)
    result = train(
        model, epoch_batches(copy_examples(), batch_size=8, pad_id=0, max_length=8, seed=0), TrainSettings(lr=1e-2, steps=1)
    )
    rank = 4  # r·(in + out) per adapted layer
    assert (
        count
        == result.trainable_params
        == rank
        * sum(layer.get_base_layer().in_features + layer.get_base_layer().out_features for layer in lora_layers(model).values())
    )


def test_pissa_starts_at_the_base_function_and_saves_a_lora_for_the_original_base(tmp_path):
    run = adapter_run("pissa")
    base_logits, base_q = logits(tiny_llama()), tiny_llama().model.layers[0].self_attn.q_proj.weight
    model = apply_method(tiny_llama(), run)
    torch.testing.assert_close(logits(model), base_logits, rtol=1e-5, atol=1e-5)
    residual = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(residual, base_q, atol=1e-3)  # PiSSA moved the top singular part into A0, B0
    expected = logits(train_steps(model))
    save_tuned(model, tmp_path, run)
    saved = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    config = saved.peft_config["default"]
    assert (config.r, config.lora_alpha, config.init_lora_weights) == (2 * run.rank, 2 * run.alpha, True)
    torch.testing.assert_close(logits(saved), expected)
    # the trained model is intact after the conversion: one adapter, still trainable, same function
    assert list(model.peft_config) == ["default"] and trainable(model) > 0
    torch.testing.assert_close(logits(model), expected)


def test_pissa_without_its_initial_adapter_is_refused(tmp_path):
    from ftcompare.models.weights import PISSA_INITIAL_ATTR

    model = apply_method(tiny_llama(), adapter_run("pissa"))
    delattr(model, PISSA_INITIAL_ATTR)
    with pytest.raises(ValueError, match="initial PiSSA"):
        save_tuned(model, tmp_path, adapter_run("pissa"))


def test_a_reloaded_pissa_run_trains_on_and_saves_for_the_original_base(tmp_path):
    run = adapter_run("pissa")
    save_tuned(train_steps(apply_method(tiny_llama(), run)), tmp_path / "first", run)
    resumed = load_tuned(tiny_llama(), run, tmp_path / "first", trainable=True)
    assert trainable(resumed) > 0
    expected = logits(train_steps(resumed))
    save_tuned(resumed, tmp_path / "second", run)
    torch.testing.assert_close(logits(load_tuned(tiny_llama(), run, tmp_path / "second")), expected)


def test_qlora_quantizes_the_linear_layers_but_not_the_head_and_merges_to_plain_dequantized_weights():
    import bitsandbytes as bnb

    run = adapter_run("qlora")
    original = dict(tiny_llama().named_parameters())
    model = apply_method(tiny_llama(), run)
    inner = model.base_model.model
    names = adapted_weight_names(tiny_llama(), None)
    quantized = [name for name, m in inner.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert sorted(f"{n.replace('.base_layer', '')}.weight" for n in quantized) == sorted(names)
    head = inner.get_output_embeddings()
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
    for name in quantized:
        weight = inner.get_submodule(name).weight
        assert weight.dtype == torch.uint8 and weight.quant_type == "nf4" and weight.compress_statistics
        assert inner.get_submodule(name).compute_dtype == torch.float32

    train_steps(model)
    unmerged = logits(model)
    base = quantized_base_weights(model)
    assert sorted(base) == sorted(names)
    for name in names:  # the 4-bit base is close to, but not, the original weights
        assert not torch.equal(base[name], original[name])
        torch.testing.assert_close(base[name], original[name], rtol=0, atol=0.1)
    deltas = {
        f"{n.replace('base_model.model.', '')}.weight": layer.get_delta_weight("default").detach().clone()
        for n, layer in lora_layers(model).items()
    }
    assert all(delta.abs().max() > 0 for delta in deltas.values())

    merged = merge_adapter(model)
    assert not isinstance(merged, PeftModel) and not getattr(merged, "is_loaded_in_4bit", False)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    parameters = dict(merged.named_parameters())
    for name in names:
        assert type(merged.get_submodule(name.removesuffix(".weight"))) is torch.nn.Linear
        torch.testing.assert_close(parameters[name], base[name] + deltas[name], rtol=0, atol=1e-7)
    torch.testing.assert_close(logits(merged), unmerged, rtol=1e-4, atol=1e-5)


def test_qlora_computes_the_same_on_every_cpu_in_training_and_inference():
    """bnb repacks 4-bit weights at inference on AVX512-BF16 CPUs (absmax rounded to bf16; fails for the
    tiny model's 32-wide matrices). ftcompare keeps every layer on the plain kernel, so an inference
    forward equals a training-mode one bit for bit and leaves the quantized weights as they were."""
    model = quantize_4bit(tiny_llama())
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    before = [dequantize_4bit(layer).clone() for layer in layers]
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        training_logits = model.train()(tokens).logits
        inference_logits = model.eval()(tokens).logits  # the path bnb would repack on
    torch.testing.assert_close(inference_logits, training_logits, rtol=0, atol=0)
    for layer, weight in zip(layers, before):
        assert torch.equal(dequantize_4bit(layer), weight)
    assert "bf16" in method_record(adapter_run("qlora"))["quantization"]["cpu_kernel"]


def test_qlora_quantizes_gpt2_conv1d_layers_as_the_linear_maps_they_compute():
    """GPT-2 holds its linear layers as Conv1D, weight stored (in, out): they are quantized as (out, in)
    4-bit layers, not left in full precision under an adapter labelled QLoRA."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=16, vocab_size=32, bos_token_id=1, eos_token_id=1)
    )
    original = {name: weight.detach().clone() for name, weight in gpt2.named_parameters()}
    names = adapted_weight_names(gpt2, None)
    model = apply_method(gpt2, adapter_run("qlora"))
    inner = model.base_model.model
    quantized = {f"{n.replace('.base_layer', '')}.weight" for n, m in inner.named_modules() if type(m).__name__ == "Linear4bit"}
    assert quantized == set(names) and len(names) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 layers
    assert model.peft_config["default"].fan_in_fan_out is False  # the 4-bit layers are (out, in)
    base = quantized_base_weights(model)
    assert sorted(base) == sorted(names)
    for name in names:  # NF4 of the transposed Conv1D weight (on square c_proj only the values tell)
        assert base[name].shape == original[name].T.shape and (base[name] - original[name].T).abs().max() < 0.02
        if base[name].shape[0] == base[name].shape[1]:
            assert (base[name] - original[name].T).abs().mean() < (base[name] - original[name]).abs().mean() / 4
    train_steps(model)
    unmerged = logits(model)
    torch.testing.assert_close(logits(merge_adapter(model)), unmerged, rtol=1e-4, atol=1e-5)


def test_qlora_computes_and_keeps_adapters_in_the_base_dtype():
    model = apply_method(tiny_llama(dtype=torch.bfloat16), adapter_run("qlora"))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    assert {m.compute_dtype for m in model.modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "quant_state")} == {
        torch.bfloat16
    }
    merged = merge_adapter(model)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    record = method_record(adapter_run("qlora"), torch.bfloat16)["quantization"]
    assert (record["quant_type"], record["double_quant"], record["compute_dtype"]) == ("nf4", True, "bfloat16")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_layers_to_transform_adapts_only_the_chosen_layers(method, tmp_path):
    run = adapter_run(method)
    model = apply_method(tiny_llama(), run, layers=[1])
    adapted = lora_layers(model)
    assert len(adapted) == 7 and all(".layers.1." in name for name in adapted)
    expected = logits(train_steps(model))
    save_tuned(model, tmp_path, run)
    reloaded = load_tuned(tiny_llama(), run, tmp_path, layers=[1])
    assert reloaded.peft_config["default"].layers_to_transform == [1]
    assert all(".layers.1." in name for name in lora_layers(reloaded))
    torch.testing.assert_close(logits(reloaded), expected)
    with pytest.raises(ValueError, match="layers"):
        load_tuned(tiny_llama(), run, tmp_path, layers=[0])


def test_method_records_say_what_each_kind_did():
    records = {m: method_record(adapter_run(m)) for m in ADAPTER_KINDS}
    assert records["qlora"]["quantization"]["prepare_model_for_kbit_training"] is False
    assert all(records[m]["quantization"] is None for m in ADAPTER_KINDS if m != "qlora")
    assert records["rslora"]["scaling"] == pytest.approx(8 / 2) and records["dora"]["dora"]
    assert "pissa" in records["pissa"]["init"] and "2r" in records["pissa"]["saved_adapter"]
    assert method_record(RunSpec(run_id="f", method="full", seed=0, lr=1e-3))["method"] == "full"
