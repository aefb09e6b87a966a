"""PiSSA (Meng et al. 2024): A, B initialized from the top-r singular vectors of W (PEFT
`init_lora_weights="pissa"`, exact SVD: `torch.linalg.svd`, the paper's init; the randomized
"pissa_niter_N" would only save time on large bases and adds an approximation to what we compare).

PiSSA moves the top-r singular part of W into A0·B0 and leaves the residual W − s·B0A0 in the base, so the
trained adapter only makes sense on that residual base. `build` keeps the initial A0, B0 in memory
(`PISSA_INITIAL_ATTR` on the returned model); `save` writes them to a temporary folder and saves with PEFT's
`path_initial_model_for_weight_conversion`, which stores the update as a plain rank-2r LoRA
(ΔW = s·(BA − B0A0)) that applies to the ORIGINAL base. Nothing extra lands in the run folder. A PiSSA run
reloaded by `load` is that LoRA already and is saved as is (a sequence resumed mid-way)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ftcompare.models.methods.lora import LoraSettings, lora_peft_config
from ftcompare.models.methods.registry import Method, register_method

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel

    from ftcompare.matrix import RunSpec

_INITIAL_ADAPTER = "initial"  # folder (and temporary adapter) name PEFT's PiSSA conversion loads A0, B0 from


class PissaSettings(LoraSettings):
    """PiSSA: LoRA's fields; A, B start from the top-r singular vectors of W, the base keeps the residual."""

    kind: Literal["pissa"] = Field(default="pissa", description="Selects this method: PiSSA.")


@register_method
class Pissa(Method):
    kind = "pissa"
    label = "PiSSA"
    settings = PissaSettings
    vllm_serves_adapter = True
    init = "pissa: A, B from the top-r singular vectors of W (exact SVD), base keeps the residual"
    saved_adapter = "plain LoRA of rank 2r on the original base (PEFT path_initial_model_for_weight_conversion)"

    def peft_config(self, run: RunSpec, model: torch.nn.Module, layers: list[int] | None) -> LoraConfig:
        return lora_peft_config(run, model, layers, init_lora_weights="pissa")

    def saved_rank(self, run: RunSpec) -> int:
        return 2 * run.rank  # the conversion stores s·(BA − B0A0) as one LoRA of rank 2r

    def build(self, model: PreTrainedModel, run: RunSpec, layers: list[int] | None = None) -> torch.nn.Module:
        from peft import get_peft_model_state_dict

        from ftcompare.models.weights import PISSA_INITIAL_ATTR

        peft_model = super().build(model, run, layers)
        initial = get_peft_model_state_dict(peft_model)
        setattr(peft_model, PISSA_INITIAL_ATTR, {k: v.detach().to("cpu", copy=True) for k, v in initial.items()})
        return peft_model

    def save(self, model: torch.nn.Module, directory: Path, run: RunSpec) -> None:
        from safetensors.torch import save_file

        from ftcompare.models.weights import PISSA_INITIAL_ATTR

        initial = getattr(model, PISSA_INITIAL_ATTR, None)
        if initial is None:
            if str(model.peft_config["default"].init_lora_weights).startswith("pissa"):  # a residual base, no A0, B0
                raise ValueError(f"{run.run_id}: no initial PiSSA adapter on the model; build it with the method's build")
            model.save_pretrained(directory)  # reloaded by `load`: already a LoRA on the original base
            return
        with tempfile.TemporaryDirectory() as scratch:
            initial_dir = Path(scratch) / _INITIAL_ADAPTER
            initial_dir.mkdir()
            save_file({k: v.contiguous() for k, v in initial.items()}, initial_dir / "adapter_model.safetensors")
            with warnings.catch_warnings():  # PEFT warns against loading A0, B0 beside PiSSA: the conversion does just that
                warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
                model.save_pretrained(directory, path_initial_model_for_weight_conversion=str(initial_dir))
