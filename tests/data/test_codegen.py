from ftcompare.data.codegen import IN_DOMAIN, OUT_OF_DOMAIN, generate_task
from ftcompare.data.problems import TESTS_MARKER
from ftcompare.data.tasks import finetune_examples, training_subset
from ftcompare.evaluate.sandbox import run_programs
from ftcompare.train.loop import IGNORE_INDEX


def _key(problem):
    # the docstring's first line names family, argument and constants; the name and inputs vary
    return problem.prompt.split("(", 1)[1].split(")", 1)[0], problem.prompt.split('"""', 1)[1].split("\n", 1)[0]


def test_generation_is_deterministic_from_the_seed():
    a = generate_task(seed=3, n_train=50, n_test=20, n_ood=10)
    b = generate_task(seed=3, n_train=50, n_test=20, n_ood=10)
    c = generate_task(seed=4, n_train=50, n_test=20, n_ood=10)
    assert a == b
    assert [p.prompt for p in a.train] != [p.prompt for p in c.train]


def test_reference_solutions_pass_their_tests():
    task = generate_task(seed=0, n_train=200, n_test=60, n_ood=40)
    for problem in task.train + task.suites["test"] + task.suites["ood"]:
        namespace: dict = {}
        exec(problem.program(problem.completion), namespace)  # our own generated references, not model output


def test_test_split_keys_never_occur_in_train():
    task = generate_task(seed=0, n_train=1500, n_test=100, n_ood=40)
    train_keys = {_key(p) for p in task.train}
    assert not train_keys & {_key(p) for p in task.suites["test"]}


def test_suites_cover_their_families_evenly():
    task = generate_task(seed=0, n_train=10, n_test=len(IN_DOMAIN) * 2, n_ood=len(OUT_OF_DOMAIN))
    assert sorted(p.family for p in task.suites["test"]) == sorted([f.name for f in IN_DOMAIN] * 2)
    assert sorted(p.family for p in task.suites["ood"]) == sorted(f.name for f in OUT_OF_DOMAIN)
    assert not {p.family for p in task.train} & {f.name for f in OUT_OF_DOMAIN}


def test_program_assembles_prefix_completion_and_asserts():
    problem = generate_task(seed=0, n_train=1, n_test=1, n_ood=0).suites["test"][0]
    program = problem.program("    return None\n")
    assert program.startswith(problem.prompt + "    return None\n")
    assert program.rstrip().endswith(problem.tests[-1])


class _CharTokenizer:
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_finetune_examples_mask_the_prompt():
    problems = generate_task(seed=0, n_train=3, n_test=1, n_ood=0).train
    for problem, (ids, labels) in zip(problems, finetune_examples(problems, _CharTokenizer())):
        n_prompt = len(problem.prompt)
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] == [ord(c) for c in problem.completion] + [0]


def test_a_family_subset_trains_and_tests_on_those_families_and_keeps_the_rest_out_of_domain():
    task = generate_task(seed=1, n_train=60, n_test=20, n_ood=16, families=["add", "str_upper"])
    assert {p.family for p in task.train} == {"add", "str_upper"}
    assert {p.family for p in task.suites["test"]} == {"add", "str_upper"}
    assert "str_upper" not in {p.family for p in task.suites["ood"]} and len(task.suites["ood"]) == 16
    every_string_family = [f.name for f in OUT_OF_DOMAIN]
    assert "ood" not in generate_task(seed=1, n_train=10, n_test=5, n_ood=5, families=every_string_family).suites


def test_training_subsets_are_nested_fixed_and_sized_by_the_fraction():
    train = generate_task(seed=0, n_train=40, n_test=1, n_ood=0).train
    quarter, half = training_subset(train, 0.25), training_subset(train, 0.5)
    assert (len(quarter), len(half), len(training_subset(train, 0.01))) == (10, 20, 1)
    ids = [p.task_id for p in train]
    assert {p.task_id for p in quarter} <= {p.task_id for p in half} and training_subset(train, 0.5) == half
    assert training_subset(train, 1.0) == tuple(train)
    positions = [ids.index(p.task_id) for p in half]
    assert positions == sorted(positions)  # the original order is kept


def test_generated_asserts_are_checked_on_plain_data():
    problem = generate_task(seed=0, n_train=1, n_test=1, n_ood=0).suites["test"][0]
    assert problem.program("X").index(TESTS_MARKER) < problem.program("X").index("assert")
    patched = "    import builtins\n    builtins.int = str\n    class Same(int):\n        __eq__ = lambda s, o: True\n    return Same()\n"
    right, wrong = run_programs(
        [problem.program(problem.completion), problem.program(patched)], timeout_s=10, memory_mb=512, workers=2
    )
    assert right.passed and right.checks == {"tests": "split", "plain_data": 3, "in_process": 0}
    assert not wrong.passed and "not plain data" in wrong.exception
