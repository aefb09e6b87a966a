import pytest
import torch
from peft import PeftModel

from ftcompare.config import RunSpec
from ftcompare.models.methods import adapted_weight_names, apply_method, merge_adapter, save_tuned
from ftcompare.train.loop import TrainSettings, epoch_batches, train
from tests.helpers import copy_examples, tiny_llama

INPUT = torch.tensor([[1, 5, 5, 7, 3]])


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
    save_tuned(model, tmp_path)
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
