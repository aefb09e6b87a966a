"""Tasks, suites and the records they are made of. Importing the package registers the built-in task and suite
kinds (`suites.py` is the registry); a kind defined elsewhere registers itself with `@register_task` or
`@register_suite`."""

from ftcompare.data import codegen, humaneval, instructions, jsonl, mbpp, quixbugs  # noqa: F401  (the built-in kinds register)
