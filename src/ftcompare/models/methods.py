"""Fine-tuning methods as builders: each takes the base model and a run spec and returns the model to
train. Adding a method touches this file and one config class.

Every adapter kind (lora, qlora, dora, rslora, pissa) goes through PEFT with one `LoraConfig` built by
`lora_config`, and is saved as a standard PEFT adapter that `PeftModel.from_pretrained` loads:

- lora: W + (alpha/r)·BA, PEFT's default init (B = 0, A Kaiming-uniform).
- rslora: `use_rslora=True`, scaling alpha/√r.
- dora: `use_dora=True`, a learned magnitude vector per adapted layer.
- pissa: `init_lora_weights="pissa"` (exact SVD: `torch.linalg.svd`, the paper's init; the randomized
  "pissa_niter_N" would only save time on large bases and adds an approximation to what we compare).
  PiSSA moves the top-r singular part of W into A0·B0 and leaves the residual W − s·B0A0 in the base,
  so the trained adapter only makes sense on that residual base. `apply_method` keeps the initial A0,
  B0 in memory (`PISSA_INITIAL_ATTR` on the returned model); `save_tuned` writes them to a temporary
  folder and saves with PEFT's `path_initial_model_for_weight_conversion`, which stores the update as a
  plain rank-2r LoRA (ΔW = s·(BA − B0A0)) that applies to the ORIGINAL base. Nothing extra lands in the
  run folder, and the caller never handles the initial state.
- qlora: the base's linear layers (all but the output head) are quantized IN PLACE to bitsandbytes
  4-bit NF4 with double quantization, compute dtype = the base's dtype (`quantize_4bit`), then LoRA on
  top. In-place quantization is what `transformers` itself does after loading (it swaps nn.Linear for
  `bnb.nn.Linear4bit` and quantizes on `.to(device)`), so the caller's loaded model works and no reload
  from disk is needed; the 4-bit weights are identical to a `BitsAndBytesConfig` load of the same
  weights. We do NOT call `peft.prepare_model_for_kbit_training`: it upcasts every non-4-bit parameter
  (norms, embeddings, output head) to fp32 and turns on gradient checkpointing, so a QLoRA run would
  differ from a LoRA run in dtype and speed, not only in the quantized base; base params are frozen by
  `get_peft_model` anyway, and without checkpointing no input-grad hook is needed. The adapter is saved
  as usual and applies to the 4-bit base (`load_tuned` quantizes a fresh base first). Merging does
  NOT requantize: tuned W = dequantize(W_4bit) + ΔW in the compute dtype, as plain nn.Linear
  (`merge_adapter`); `quantized_base_weights` gives the dequantized base the run was trained on.

Adapters are created and saved in the base's dtype (`autocast_adapter_dtype=False`); while training they
are held like every trainable parameter, full fine-tuning's included, in `training.master_weights` (fp32 by
default), so both methods get the same numerics. What each kind did is recorded with every run
(`method_record`; the training dtype in train.json's `master_weights`).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from ftcompare.config import ALL_LINEAR, RunSpec

ADAPTER_DTYPE_POLICY = "created and saved in the base dtype; trained in train.json's master_weights dtype"
QUANT_TYPE = "nf4"
DOUBLE_QUANT = True  # bnb "compress_statistics": the absmax constants are themselves quantized (QLoRA §3)
QUANT_BLOCKSIZE = 64  # bitsandbytes' default and the QLoRA paper's
PISSA_INITIAL_ATTR = "ftcompare_pissa_initial_adapter"  # the PiSSA A0, B0 kept by apply_method for save_tuned
_INITIAL_ADAPTER = "initial"  # folder (and temporary adapter) name PEFT's PiSSA conversion loads A0, B0 from


def lora_config(run: RunSpec, model: torch.nn.Module, layers: list[int] | None = None) -> LoraConfig:
    """The one LoraConfig every adapter kind is built from; the kinds differ only in the flags below.

    `layers` restricts the adapters to those decoder layers (layer-wise LoRA). PEFT refuses
    `layers_to_transform` with the string "all-linear", so with `layers` the targets are spelled out
    as the leaf names of `model`'s linear layers (all but the output head, what "all-linear" means).
    No `layers_pattern` is needed for Llama-style models: PEFT then reads a module's layer index from
    the first numbered segment of its name (`model.layers.<i>.…`).
    """
    if not run.is_adapter:
        raise ValueError(f"{run.run_id}: method {run.method!r} has no adapter")
    targets = run.target_modules
    if layers is not None and targets == ALL_LINEAR:
        targets = sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in adapted_weight_names(model, ALL_LINEAR)})
    return LoraConfig(
        r=run.rank,
        lora_alpha=run.alpha,
        lora_dropout=run.dropout,
        target_modules=targets,
        use_rslora=run.method == "rslora",
        use_dora=run.method == "dora",
        init_lora_weights="pissa" if run.method == "pissa" else True,
        layers_to_transform=sorted(layers) if layers is not None else None,
        task_type="CAUSAL_LM",
    )


def apply_method(model: PreTrainedModel, run: RunSpec, layers: list[int] | None = None) -> torch.nn.Module:
    """The model to train for `run`: the base itself with every parameter trainable (full FT), or a PEFT
    wrapper with the run's adapter (for qlora around the base quantized in place to 4 bits)."""
    if run.method == "full":
        if layers is not None:
            raise ValueError("layers: full fine-tuning trains every layer")
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    if run.method == "qlora":
        quantize_4bit(model)
    peft_model = get_peft_model(model, lora_config(run, model, layers), autocast_adapter_dtype=False)
    if run.method == "pissa":
        initial = get_peft_model_state_dict(peft_model)
        setattr(peft_model, PISSA_INITIAL_ATTR, {k: v.detach().to("cpu", copy=True) for k, v in initial.items()})
    return peft_model


def save_tuned(model: torch.nn.Module, directory: Path, run: RunSpec | None = None) -> None:
    """Save what the method trained: the whole model for full FT, else a standard PEFT adapter.

    PiSSA's adapter is converted to a plain LoRA adapter (rank 2r) on the original, unmodified base,
    from the initial A0, B0 `apply_method` kept; a PiSSA run reloaded by `load_tuned` is that LoRA
    already and is saved as is (a sequence resumed mid-way). QLoRA's applies to the 4-bit base (see
    `load_tuned`). `run` only names the run in errors."""
    directory = Path(directory)
    initial = getattr(model, PISSA_INITIAL_ATTR, None) if isinstance(model, PeftModel) else None
    if initial is None and isinstance(model, PeftModel):
        if str(model.peft_config["default"].init_lora_weights).startswith("pissa"):  # a residual base, no A0, B0
            raise ValueError(f"{run.run_id if run else 'model'}: no initial PiSSA adapter on the model; build it with apply_method")
    if initial is None:  # full FT, LoRA kinds, or a PiSSA run reloaded by load_tuned (already a LoRA on the original base)
        model.save_pretrained(directory)
        return
    with tempfile.TemporaryDirectory() as scratch:
        initial_dir = Path(scratch) / _INITIAL_ADAPTER
        initial_dir.mkdir()
        save_file({k: v.contiguous() for k, v in initial.items()}, initial_dir / "adapter_model.safetensors")
        with warnings.catch_warnings():  # PEFT warns against loading A0, B0 beside PiSSA: the conversion does just that
            warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
            model.save_pretrained(directory, path_initial_model_for_weight_conversion=str(initial_dir))


def prepare_base(model: PreTrainedModel, run: RunSpec) -> PreTrainedModel:
    """The base the run's adapter applies to: the 4-bit quantized base for qlora, else `model` itself."""
    return quantize_4bit(model) if run.method == "qlora" else model


def load_tuned(base_model: PreTrainedModel, run: RunSpec, directory: Path, layers: list[int] | None = None,
               *, trainable: bool = False) -> torch.nn.Module:
    """The inverse of `save_tuned`: the fresh `base_model` with the saved adapter (quantized first for
    qlora), unmerged; or, for full FT, the saved model in the base's dtype and device.

    A PiSSA run comes back as the converted plain LoRA adapter on the original base (same function; to
    continue training it would train that rank-2r LoRA, not PiSSA). `layers`, when given, must match
    the layers the adapter was saved with."""
    directory = Path(directory)
    if run.method == "full":
        device = next(base_model.parameters()).device
        return AutoModelForCausalLM.from_pretrained(directory, dtype=base_model.dtype).to(device).requires_grad_(trainable)
    model = PeftModel.from_pretrained(prepare_base(base_model, run), directory, is_trainable=trainable,
                                      autocast_adapter_dtype=False)
    saved = model.peft_config["default"].layers_to_transform
    if layers is not None and sorted(layers) != sorted(saved or []):
        raise ValueError(f"{directory}: the adapter was saved for layers {saved}, not {sorted(layers)}")
    return model


def merge_adapter(model: torch.nn.Module) -> PreTrainedModel:
    """A plain model with any adapter update folded into its weights (in place: the wrapper is consumed).

    4-bit layers are not requantized: each becomes a plain nn.Linear holding dequantize(W_4bit) + ΔW in
    the compute dtype (summed in fp32, cast once), so spectral analysis and generation see ordinary
    weights. A plain model (no adapter, no 4-bit layer) is returned as is."""
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
    """Quantize, in place, every nn.Linear but the output head to bitsandbytes 4-bit NF4 with double
    quantization, computing in the model's dtype (QLoRA's recipe); marks the model `is_loaded_in_4bit`
    as a `BitsAndBytesConfig` load does, which is what PEFT keys its 4-bit LoRA layers on."""
    import bitsandbytes as bnb

    dtype = model.dtype
    head = model.get_output_embeddings()
    for name, module in list(model.named_modules()):
        if type(module) is not torch.nn.Linear or module is head:
            continue
        device = module.weight.device
        quantized = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                      compute_dtype=dtype, compress_statistics=DOUBLE_QUANT, quant_type=QUANT_TYPE,
                                      quant_storage=torch.uint8, device="meta")
        quantized.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, blocksize=QUANT_BLOCKSIZE,
                                             compress_statistics=DOUBLE_QUANT, quant_type=QUANT_TYPE,
                                             quant_storage=torch.uint8, module=quantized).to(device)  # quantizes
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


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters that receive gradients (the training loop reports the same count after training)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def method_record(run: RunSpec, dtype: torch.dtype | None = None) -> dict:
    """What the method did, for train.json: adapter kind, init, scaling, dtypes, quantization."""
    if not run.is_adapter:
        return {"method": "full", "trainable": "every parameter", "dtype": _dtype_name(dtype)}
    record = {
        "method": run.method,
        "library": "peft",
        "rank": run.rank,
        "alpha": run.alpha,
        "scaling": run.scaling,
        "scaling_rule": "alpha/sqrt(r)" if run.method == "rslora" else "alpha/r",
        "dora": run.method == "dora",
        "init": ("pissa: A, B from the top-r singular vectors of W (exact SVD), base keeps the residual"
                 if run.method == "pissa" else "B = 0, A Kaiming-uniform (PEFT default)"),
        "adapter_dtype": ADAPTER_DTYPE_POLICY,
        "saved_adapter": ("plain LoRA of rank 2r on the original base (PEFT path_initial_model_for_weight_conversion)"
                          if run.method == "pissa" else "PEFT LoRA adapter" + (" on the 4-bit base" if run.method == "qlora" else "")),
        "quantization": None,
    }
    if run.method == "qlora":
        import bitsandbytes

        record["quantization"] = {
            "library": f"bitsandbytes {bitsandbytes.__version__}",
            "quant_type": QUANT_TYPE,
            "double_quant": DOUBLE_QUANT,
            "blocksize": QUANT_BLOCKSIZE,
            "compute_dtype": _dtype_name(dtype) or "base dtype",
            "quant_storage": "uint8",
            "cpu_kernel": "plain 4-bit (bnb's AVX512-BF16 repacking off: it rounds the absmax constants to bf16)",
            "quantized": "every linear layer but the output head, in place",
            "prepare_model_for_kbit_training": False,
            "merge": "dequantize(W_4bit) + ΔW in the compute dtype, no requantization",
        }
    return record


def adapted_weight_names(model: PreTrainedModel, target_modules: list[str] | str | None) -> list[str]:
    """Names of the weight matrices a method changes, for the spectral analysis.

    For LoRA these are the targeted linear layers; full FT is compared over the same set as
    "all-linear" LoRA (every linear layer but the output head), so counts line up across methods.
    """
    output_head = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output_head:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if target_modules in (None, ALL_LINEAR) or leaf in target_modules:
            names.append(f"{name}.weight")
    return names


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def _is_4bit(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes")


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _plain_linear(like: torch.nn.Module, weight: torch.Tensor) -> torch.nn.Linear:
    """An nn.Linear with `like`'s shape, bias and training mode and the given weight."""
    linear = torch.nn.Linear(like.in_features, like.out_features, bias=like.bias is not None,
                             device=weight.device, dtype=weight.dtype)
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
