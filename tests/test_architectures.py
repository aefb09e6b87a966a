"""A study on tiny random Llama, Qwen2 and GPT-2 bases saved to a local folder: every adapted matrix is
analysed, in the right orientation (GPT-2's Conv1D stores its weight (in, out)), with ΔW read from the
adapter's exact update."""

import inspect
import json

import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from ftcompare.analyze.spectral import SpectrumCache
from ftcompare.analyze.stage import Reference, spectral_stage
from ftcompare.cli import app
from ftcompare.config import SpectralConfig, StudyConfig
from ftcompare.matrix import RunSpec
from ftcompare.models.builtin import build_tokenizer
from ftcompare.report.tables import intruder_total
from ftcompare.runs.store import RunDir

pytestmark = pytest.mark.slow

HIDDEN, LAYERS, HEADS, POSITIONS = 64, 2, 4, 1024
LLAMA_TARGETS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
# the modules "all-linear" adapts in each decoder layer
ARCHITECTURES = {
    "llama": (LLAMA_TARGETS, "model.layers.{layer}.{module}.weight"),
    "qwen2": (LLAMA_TARGETS, "model.layers.{layer}.{module}.weight"),
    "gpt2": (("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), "transformer.h.{layer}.{module}.weight"),
}
RANK = 2


def tiny_model(architecture: str, tokenizer):
    special = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if architecture == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS, bos_token_id=tokenizer.eos_token_id, **special
            )
        )
    common = {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": POSITIONS,
        "bos_token_id": None,
        **special,
    }
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=HEADS // 2, **common))
    return LlamaForCausalLM(LlamaConfig(num_key_value_heads=HEADS, **common))


@pytest.fixture(scope="module")
def tokenizer():
    # a byte-level BPE as the built-in model's, trained in milliseconds on one module's source
    return build_tokenizer(inspect.getsource(json.decoder), vocab_size=320)


def study(architecture: str, model_dir) -> dict:
    return {
        "experiment": architecture,
        "base": {"model": str(model_dir), "dtype": "bfloat16"},
        "task": {"kind": "generated", "n_train": 16, "n_test": 2, "n_ood": 0},
        "methods": [
            {"kind": "full", "lr": 1e-3},
            {"kind": "lora", "rank": [RANK], "alpha_lr_product": 0.02},
            {"kind": "qlora", "rank": [RANK], "alpha_lr_product": 0.02},
        ],
        "training": {"max_steps": 2, "batch_size": 8, "max_length": 128},
        "evaluation": {"n_samples": 0, "k": [1], "max_new_tokens": 4, "timeout_s": 3, "forgetting": None, "latency": None},
        "analyses": {"spectral": {"k": 4}},
    }


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_adapted_matrix_is_analysed_with_its_exact_update(architecture, tokenizer, tmp_path, cache_dir):
    torch.manual_seed(0)
    model_dir = tmp_path / f"tiny-{architecture}"
    tiny_model(architecture, tokenizer).to(torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    config_path = tmp_path / "study.yaml"
    config_path.write_text(yaml.safe_dump(study(architecture, model_dir)))
    result = CliRunner().invoke(
        app, ["run", str(config_path), "--output", str(tmp_path)], env={"FTCOMPARE_CACHE": str(cache_dir)}
    )
    assert result.exit_code == 0, result.output

    modules, pattern = ARCHITECTURES[architecture]
    expected = {pattern.format(layer=layer, module=module) for layer in range(LAYERS) for module in modules}
    for run_id in ("full-s0", f"lora-r{RANK}-s0", f"qlora-r{RANK}-s0"):
        record = json.loads((tmp_path / architecture / run_id / "spectral.json").read_text())
        assert record["delta"] == record["summary"]["delta"] == "exact-fp32"
        assert {m["name"] for m in record["matrices"]} == expected and record["summary"]["matrices"] == len(expected) > 0
        # (out, in) as nn.Linear: GPT-2's c_fc maps HIDDEN to 4·HIDDEN, so its matrix has 4·HIDDEN rows
        shapes = {m["name"].rsplit(".", 2)[-2]: tuple(m["shape"]) for m in record["matrices"]}
        assert shapes.get("c_fc", (4 * HIDDEN, HIDDEN)) == (4 * HIDDEN, HIDDEN)
        assert all(m["delta_fro_norm"] > 0 for m in record["matrices"]), run_id  # every matrix trained
    lora = json.loads((tmp_path / architecture / f"lora-r{RANK}-s0" / "spectral.json").read_text())
    adapter = json.loads((tmp_path / architecture / f"lora-r{RANK}-s0" / "weights" / "adapter_config.json").read_text())
    assert adapter["fan_in_fan_out"] is (architecture == "gpt2")  # PEFT's flag for Conv1D's (in, out) weights
    # a rank-2 update on a bf16 base reads rank <= 2: not the rounding of a bf16 merge
    assert max(m["delta_effective_rank"] for m in lora["matrices"]) <= RANK + 1e-3


class NoLinearLM(torch.nn.Module):
    """A model with nothing the spectral analysis reads (an embedding only)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(8, 4)

    def get_output_embeddings(self):
        return None


class Context:
    config = StudyConfig.model_validate({"experiment": "none", "methods": [{"kind": "full"}], "analyses": {"spectral": {}}})


def test_an_analysis_with_no_matrix_to_analyse_is_an_error_not_zero_over_zero(tmp_path):
    run = RunSpec(run_id="full-s0", method="full", seed=0, lr=1e-3)
    assert Context.config.analyses.spectral == SpectralConfig()
    with pytest.raises(RuntimeError, match="no adapted weight matrix"):
        spectral_stage(run, RunDir(tmp_path), Context(), NoLinearLM(), Reference({}, SpectrumCache(None, "none")))
    assert not (tmp_path / "spectral.json").exists()
    # a record written before that was refused shows no count in the report, not a zero
    assert intruder_total({"spectral": {"matrices": 0, "total_intruders": 0}}) is None
    assert intruder_total({"spectral": {"matrices": 3, "total_intruders": 2}}) == 2
