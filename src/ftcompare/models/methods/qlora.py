"""QLoRA (Dettmers et al. 2023): LoRA on the base quantized in place to 4-bit NF4 with double quantization
(bitsandbytes), computing in the base dtype (see `ftcompare.models.weights.quantize_4bit` for why in place
and why not `prepare_model_for_kbit_training`). The adapter is saved as usual and applies to the 4-bit base
(`load` quantizes a fresh base first). Merging does NOT requantize; the spectral analysis and the forgetting
baseline read the dequantized 4-bit base the adapter was trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ftcompare.models.methods.lora import LoraSettings, lora_peft_config
from ftcompare.models.methods.registry import Method, register_method

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel

    from ftcompare.matrix import RunSpec


class QloraSettings(LoraSettings):
    """QLoRA: LoRA's fields, on the base quantized to 4-bit NF4 (needs bitsandbytes: `pip install ftcompare[qlora]`)."""

    kind: Literal["qlora"] = Field(default="qlora", description="Selects this method: QLoRA.")


@register_method
class Qlora(Method):
    kind = "qlora"
    label = "QLoRA"
    settings = QloraSettings
    quantized_base = "nf4"
    saved_adapter = "PEFT LoRA adapter on the 4-bit base"

    def peft_config(self, run: RunSpec, model: torch.nn.Module, layers: list[int] | None) -> LoraConfig:
        return lora_peft_config(run, model, layers)

    def prepare_base(self, model: PreTrainedModel, run: RunSpec) -> PreTrainedModel:
        from ftcompare.models.weights import quantize_4bit

        return quantize_4bit(model)

    def reference_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from ftcompare.models.weights import quantized_base_weights

        return quantized_base_weights(model)

    def record(self, run: RunSpec, dtype: torch.dtype | None = None) -> dict:
        import bitsandbytes

        from ftcompare.models.weights import DOUBLE_QUANT, QUANT_BLOCKSIZE, QUANT_TYPE

        return {
            **super().record(run, dtype),
            "quantization": {
                "library": f"bitsandbytes {bitsandbytes.__version__}",
                "quant_type": QUANT_TYPE,
                "double_quant": DOUBLE_QUANT,
                "blocksize": QUANT_BLOCKSIZE,
                "compute_dtype": str(dtype).removeprefix("torch.") if dtype is not None else "base dtype",
                "quant_storage": "uint8",
                "cpu_kernel": "plain 4-bit (bnb's AVX512-BF16 repacking off: it rounds the absmax constants to bf16)",
                "quantized": "every linear layer but the output head, in place",
                "prepare_model_for_kbit_training": False,
                "merge": "dequantize(W_4bit) + ΔW in the compute dtype, no requantization",
            },
        }
