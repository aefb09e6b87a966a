"""A method and a suite defined outside ftcompare, one class each (plus the Method's few lines): what a user
writes to add VeRA (Kopiczko et al. 2024, through PEFT) and a benchmark of their own. Loaded by a config's
`plugins:` key in tests/test_plugins.py."""

from typing import Literal

from pydantic import Field

from ftcompare.data.problems import Problem, SuiteInfo
from ftcompare.data.suites import SuiteSettings, register_suite
from ftcompare.models.methods import Method, register_method
from ftcompare.models.methods.lora import LoraSettings


class VeraSettings(LoraSettings):
    """VeRA: shared frozen random A, B of rank r; each layer learns only two scaling vectors."""

    kind: Literal["vera"] = "vera"


@register_method
class Vera(Method):
    kind = "vera"
    label = "VeRA"
    settings = VeraSettings
    init = "A, B shared random (frozen, PRNG key 0); d = 0.1, b = 0 (PEFT default)"
    saved_adapter = "PEFT VeRA adapter"

    def peft_config(self, run, model, layers):
        from peft import VeraConfig

        return VeraConfig(r=run.rank, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    def scaling(self, run):
        return None  # VeRA scales with its learned vectors, not alpha/r


@register_suite
class DoublingSuite(SuiteSettings):
    """Three problems that ask for a function doubling its argument; the checks first sleep `sleep_s`, so the
    suite's own `timeout_s` decides whether they finish."""

    kind: Literal["doubling"] = "doubling"
    name: str = "doubling"
    sleep_s: float = Field(default=0.0, ge=0, description="Seconds the checks sleep before asserting.")

    def load(self, tokenizer=None):
        problems = tuple(
            Problem(
                task_id=f"doubling/{i}",
                prompt=f"def double_{i}(x):\n",
                completion="    return 2 * x\n",
                tests=(f"assert double_{i}({i}) == {2 * i}",),
                entry_point=f"double_{i}",
                code_prefix=f"def double_{i}(x):\n",
                setup=f"import time\ntime.sleep({self.sleep_s})",
            )
            for i in range(3)
        )
        return problems, SuiteInfo(in_domain=self.in_domain, extraction="completion")

    def count(self):
        return 3
