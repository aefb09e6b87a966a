"""What a method does to the weights, for every method kind: 4-bit quantization (QLoRA's base), merging an
adapter into plain weights, the exact update ΔW of every adapted matrix (the spectral analysis), and which
matrices count as adapted.

- qlora: the base's linear layers (all but the output head) are quantized IN PLACE to bitsandbytes
  4-bit NF4 with double quantization, compute dtype = the base's dtype (`quantize_4bit`), then LoRA on
  top. In-place quantization is what `transformers` itself does after loading (it swaps nn.Linear for
  `bnb.nn.Linear4bit` and quantizes on `.to(device)`), so the caller's loaded model works and no reload
  from disk is needed; the 4-bit weights are identical to a `BitsAndBytesConfig` load of the same
  weights. We do NOT call `peft.prepare_model_for_kbit_training`: it upcasts every non-4-bit parameter
  (norms, embeddings, output head) to fp32 and turns on gradient checkpointing, so a QLoRA run would
  differ from a LoRA run in dtype and speed, not only in the quantized base; base params are frozen by
  `get_peft_model` anyway, and without checkpointing no input-grad hook is needed. Merging does NOT
  requantize: tuned W = dequantize(W_4bit) + ΔW in the compute dtype, as plain nn.Linear
  (`merge_adapter`); `quantized_base_weights` gives the dequantized base the run was trained on.

GPT-2-style models hold their linear layers as transformers' Conv1D, weight stored (in, out): they count
as linear layers ("all-linear", `adapted_weight_names`), PEFT is told `fan_in_fan_out`, and the spectral
analysis reads them as (out, in) (`as_out_in`); QLoRA quantizes them as the (out, in) 4-bit linear layers
they compute with (so its adapters need no fan_in_fan_out). `weight_updates` gives each adapted matrix's exact ΔW
from the adapter's own factors, for the spectral analysis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import transpose
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ftcompare.models.methods.lora import ALL_LINEAR

QUANT_TYPE = "nf4"
DOUBLE_QUANT = True  # bnb "compress_statistics": the absmax constants are themselves quantized (QLoRA §3)
QUANT_BLOCKSIZE = 64  # bitsandbytes' default and the QLoRA paper's
PISSA_INITIAL_ATTR = "ftcompare_pissa_initial_adapter"  # PiSSA's A0, B0, kept by its build for its save


def merge_adapter(model: torch.nn.Module) -> PreTrainedModel:
    """A plain model with any adapter update folded into its weights (in place: the wrapper is consumed).

    4-bit layers are not requantized: each becomes a plain nn.Linear holding dequantize(W_4bit) + ΔW in
    the compute dtype (summed in fp32, cast once), so generation and the causal test see ordinary
    weights. The spectral analysis reads the exact update before this (`weight_updates`): a bf16 merge
    rounds W0 + ΔW, and for a small ΔW that rounding is most of the difference. A plain model (no
    adapter, no 4-bit layer) is returned as is."""
    if isinstance(model, PeftModel):
        for name, module in list(model.base_model.model.named_modules()):
            if isinstance(module, LoraLayer) and _is_4bit(module.get_base_layer()):
                base = module.get_base_layer()
                weight = dequantize_4bit(base).float()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        if module.use_dora.get(adapter, False):
                            raise NotImplementedError("merging DoRA into a 4-bit base")
                        weight += module.get_delta_weight(adapter).float()
                _set_module(model.base_model.model, name, _plain_linear(base, weight.to(base.compute_dtype)))
        model = model.merge_and_unload()
    _dequantize_remaining(model)
    return model


def quantize_4bit(model: PreTrainedModel) -> PreTrainedModel:
    """Quantize, in place, every linear layer but the output head (nn.Linear, and GPT-2's Conv1D as the
    (out, in) linear map it computes) to bitsandbytes 4-bit NF4 with double quantization, computing in the
    model's dtype (QLoRA's recipe); marks the model `is_loaded_in_4bit` as a `BitsAndBytesConfig` load does,
    which is what PEFT keys its 4-bit LoRA layers on."""
    import bitsandbytes as bnb

    dtype = model.dtype
    head = model.get_output_embeddings()
    for name, module in list(model.named_modules()):
        if type(module) not in (torch.nn.Linear, Conv1D) or module is head:
            continue
        device = module.weight.device
        weight = module.weight.data.T.contiguous() if type(module) is Conv1D else module.weight.data  # (out, in)
        quantized = bnb.nn.Linear4bit(
            weight.shape[1],
            weight.shape[0],
            bias=module.bias is not None,
            compute_dtype=dtype,
            compress_statistics=DOUBLE_QUANT,
            quant_type=QUANT_TYPE,
            quant_storage=torch.uint8,
            device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            blocksize=QUANT_BLOCKSIZE,
            compress_statistics=DOUBLE_QUANT,
            quant_type=QUANT_TYPE,
            quant_storage=torch.uint8,
            module=quantized,
        ).to(device)  # quantizes
        if module.bias is not None:
            quantized.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        # bnb repacks 4-bit weights for AVX512-BF16 CPUs at inference: the layout rounds the absmax
        # constants to bf16 (so scores would depend on the CPU), fails for matrices narrower than a
        # quantization block, and its inverse rewrites the quant state in place. The plain kernel is used.
        quantized.support_avx512bf16_for_cpu = False
        quantized.train(module.training)
        _set_module(model, name, quantized)
    model.is_loaded_in_4bit = True
    return model


def dequantize_4bit(layer: torch.nn.Module) -> torch.Tensor:
    """The weight a bnb Linear4bit computes with, dequantized (in its original dtype)."""
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)


def quantized_base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """For a QLoRA model (before `merge_adapter`): the dequantized 4-bit base weights the adapter was
    trained on, on the CPU, keyed like `adapted_weight_names` (`model.layers.0.self_attn.q_proj.weight`)."""
    inner = model.base_model.model if isinstance(model, PeftModel) else model
    weights = {}
    for name, module in inner.named_modules():
        if _is_4bit(module):
            key = name.replace(".base_layer", "")
            weights[f"{key}.weight"] = dequantize_4bit(module).detach().to("cpu")
    if not weights:
        raise ValueError("the model has no 4-bit layers (not a QLoRA model, or already merged)")
    return weights


MATRIX_LAYERS = (torch.nn.Linear, Conv1D)  # what "all-linear" adapts; Conv1D is GPT-2's linear layer, weight stored (in, out)
EXACT_DELTA = "exact-fp32"  # how `weight_updates` reads ΔW, recorded with the spectral analysis
EXACT_DELTA_RULE = (
    "adapter: W' - W0 from the adapter's own factors (PEFT get_delta_weight; DoRA's magnitude "
    "rescaling; PiSSA's s(BA - B0A0); QLoRA over the dequantized NF4 base), computed in fp64 and held "
    "in fp32, never read from the merged weights; full FT: W_ft - W0 in fp32"
)


def adapted_weight_names(model: PreTrainedModel, target_modules: list[str] | str | None) -> list[str]:
    """Names of the weight matrices a method changes, for the spectral analysis.

    For LoRA these are the targeted linear layers (nn.Linear, or GPT-2's Conv1D), matched as PEFT matches
    a list of targets: the module's name or a dotted suffix of it. Full FT is compared over the same set
    as "all-linear" LoRA (every linear layer but the output head), so counts line up across methods.
    """
    output_head = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, MATRIX_LAYERS) or module is output_head:
            continue
        if target_modules in (None, ALL_LINEAR) or any(name == t or name.endswith(f".{t}") for t in target_modules):
            names.append(f"{name}.weight")
    return names


def as_out_in(model: torch.nn.Module, name: str, weight: torch.Tensor) -> torch.Tensor:
    """`weight`, the matrix `name` of `model` (or a copy of it), as (out, in), the nn.Linear layout that the
    spectral analysis reads: GPT-2's Conv1D stores (in, out) and is transposed (a view: writes go through)."""
    module = model.get_submodule(name.removesuffix(".weight"))
    if isinstance(module, BaseTunerLayer):  # an unmerged adapter: the layout is its base layer's
        module = module.get_base_layer()
    return weight.T if isinstance(module, Conv1D) else weight


@dataclass(frozen=True)
class WeightUpdate:
    """One adapted matrix of a tuned model against its base, all (out, in), float32 on the CPU."""

    name: str  # as in the plain model's named_parameters: `model.layers.0.self_attn.q_proj.weight`
    base: torch.Tensor  # W0
    tuned: torch.Tensor  # W0 + delta: the fine-tuned matrix before any rounding to the model's dtype
    delta: torch.Tensor  # ΔW, exact (see EXACT_DELTA_RULE)


def weight_updates(model: torch.nn.Module, base_weights: dict[str, torch.Tensor]) -> Iterator[WeightUpdate]:
    """The exact update of every adapted matrix, one at a time (one matrix's copies in memory at once).

    `model` is the tuned model before `merge_adapter`: a PeftModel (its LoRA layers are the adapted
    matrices, read from the adapter's factors in fp64, so ΔW is not the rounding of a bf16 merge) or a
    fully fine-tuned plain model (every linear layer but the head: ΔW = W_ft - W0). `base_weights` are the
    base matrices the run is compared against, keyed and laid out as the plain model stores them (for
    QLoRA the dequantized 4-bit base). Yields WeightUpdate (out, in) in module order."""
    if isinstance(model, PeftModel):
        inner = model.base_model.model
        layers = [(f"{name}.weight", m) for name, m in inner.named_modules() if isinstance(m, BaseTunerLayer)]
        initial = getattr(model, PISSA_INITIAL_ATTR, None)
        for name, layer in layers:
            w0 = _base_weight(base_weights, name).to(layer.get_base_layer().weight.device, torch.float64)
            if isinstance(layer, LoraLayer):
                tuned = _exact_tuned_weight(
                    layer, w0, _initial_factors(initial, f"base_model.model.{name.removesuffix('.weight')}")
                )
            else:  # another PEFT tuner (VeRA, ...): its own update, in the adapter's dtype
                tuned = w0 + sum(layer.get_delta_weight(a).detach().double() for a in layer.active_adapters)
            yield _update(name, as_out_in(inner, name, w0), as_out_in(inner, name, tuned))
        return
    parameters = dict(model.named_parameters())
    for name in adapted_weight_names(model, None):
        w0 = _base_weight(base_weights, name).double()
        tuned = parameters[name].detach().to("cpu", torch.float64)
        yield _update(name, as_out_in(model, name, w0), as_out_in(model, name, tuned))


def _update(name: str, w0: torch.Tensor, tuned: torch.Tensor) -> WeightUpdate:
    """From fp64 W0 and W' (out, in): the difference taken in fp64, then each rounded once to fp32."""
    return WeightUpdate(name, w0.float().cpu(), tuned.float().cpu(), (tuned - w0).float().cpu())


def _base_weight(base_weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in base_weights:
        raise KeyError(
            f"no base weight {name!r} to compare the tuned model with; the base has {len(base_weights)} "
            f"adapted matrices, e.g. {next(iter(base_weights), None)!r}"
        )
    return base_weights[name]


def _exact_tuned_weight(layer: LoraLayer, w0: torch.Tensor, initial: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """W' of one LoRA layer in fp64, laid out as its base layer stores it: W_b + ΔW_adapter, or DoRA's
    m·(W_b + ΔW)/‖W_b + ΔW‖_row. W_b is the layer's base weight (dequantized for 4-bit), except for a PiSSA
    run still holding its initial factors A0, B0: there W_b = W0 - s·B0A0, the residual before PEFT rounded
    it to the model's dtype. `w0` (fp64, stored layout, on the layer's device) is the run's base."""
    if layer.merged:
        raise ValueError("the adapter is merged into its base layer: read the update before merge_adapter")
    base = layer.get_base_layer()
    native = (dequantize_4bit(base) if _is_4bit(base) else base.weight).detach()
    w = native.double()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if initial is not None:
            w = w0 - _delta_weight(layer, adapter, *initial)
        delta = _delta_weight(layer, adapter)
        if adapter in layer.lora_magnitude_vector:
            w = _dora_weight(layer, adapter, native, w, delta)
        else:
            w = w + delta
    return w


def _dora_weight(layer: LoraLayer, adapter: str, native: torch.Tensor, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """DoRA's m·(W + ΔW)/‖W + ΔW‖_row in fp64, norms by PEFT's own `get_weight_norm` (W, ΔW stored layout).

    The magnitude m is read relative to the one PEFT initialised it to, ‖W‖ computed and rounded in the
    model's dtype: m_init is recomputed that way (PEFT's init, B = 0) and m rescaled by ‖W‖_fp64 / m_init.
    Otherwise a bf16 base would read m_init/‖W‖_fp64 - 1 (~2^-9 per row) as a learned full-rank
    rescaling of W that even an untrained DoRA has; PEFT's forward, which norms in bf16 too, has none."""
    dora, fan_in_fan_out = layer.lora_magnitude_vector[adapter], layer.fan_in_fan_out
    no_update = torch.zeros((), dtype=native.dtype, device=native.device)
    m_init = dora.get_weight_norm(native, no_update, scaling=1).double()
    norm = dora.get_weight_norm(w, no_update.double(), scaling=1)
    norm_tuned = dora.get_weight_norm(w, transpose(delta, fan_in_fan_out), scaling=1)
    # grouped so that an untrained DoRA (m = m_init, ΔW = 0) gives factor 1 exactly
    factor = (dora.weight.detach().double() / m_init) * (norm / norm_tuned)
    return transpose(factor.view(-1, 1), fan_in_fan_out) * (w + delta)


def _delta_weight(
    layer: LoraLayer, adapter: str, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None
) -> torch.Tensor:
    """PEFT's own `get_delta_weight` (scaling, rsLoRA's included, and Conv1D's transpose) in fp64; with
    `lora_a`, `lora_b` given, of those factors instead of the adapter's (PiSSA's initial A0, B0)."""
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    with _factors_as(a, lora_a if lora_a is not None else a), _factors_as(b, lora_b if lora_b is not None else b):
        return layer.get_delta_weight(adapter).detach()


@contextmanager
def _factors_as(parameter: torch.nn.Parameter, value: torch.Tensor):
    """Hold `value` in fp64 as `parameter`'s data for the block, then put the very same tensor back (no
    round trip through another dtype, so the adapter is left bit for bit as it was)."""
    original = parameter.data
    parameter.data = value.detach().to(original.device, torch.float64)
    try:
        yield
    finally:
        parameter.data = original


def _initial_factors(initial: dict[str, torch.Tensor] | None, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """PiSSA's initial (A0, B0) of the layer at `prefix` (PeftModel module path), from what apply_method kept."""
    if initial is None:
        return None
    return initial[f"{prefix}.lora_A.weight"], initial[f"{prefix}.lora_B.weight"]


def stores_transposed(model: torch.nn.Module, target_modules: list[str] | str) -> bool:
    """Whether the layers `target_modules` adapts store their weight (in, out) (GPT-2's Conv1D): PEFT's fan_in_fan_out."""
    names = adapted_weight_names(model, target_modules)
    return any(isinstance(model.get_submodule(name.removesuffix(".weight")), Conv1D) for name in names)


def _is_4bit(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes")


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _plain_linear(like: torch.nn.Module, weight: torch.Tensor) -> torch.nn.Linear:
    """An nn.Linear with `like`'s shape, bias and training mode and the given weight."""
    linear = torch.nn.Linear(
        like.in_features, like.out_features, bias=like.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if like.bias is not None:
            linear.bias.copy_(like.bias.to(weight.dtype))
    linear.requires_grad_(False)
    linear.train(like.training)
    return linear


def _dequantize_remaining(model: torch.nn.Module) -> None:
    """Turn any 4-bit layer left (ones no adapter touched) into a plain nn.Linear of its dequantized weight."""
    for name, module in list(model.named_modules()):
        if _is_4bit(module):
            _set_module(model, name, _plain_linear(module, dequantize_4bit(module).to(module.compute_dtype)))
    if getattr(model, "is_loaded_in_4bit", False):
        model.is_loaded_in_4bit = False
