import os
import signal
import sys
import tempfile
import textwrap
import time

import pytest

from ftcompare.evaluate.sandbox import (
    OUTPUT_CAP_BYTES,
    SANDBOX_STATUSES,
    SandboxResult,
    classify_outcome,
    run_program,
    run_programs,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def run(source: str, **limits) -> SandboxResult:
    # generous for programs meant to finish (CI machines stall); timeout tests pass their own short limits
    limits = {"timeout_s": 10.0, "memory_mb": 512, **limits}
    return run_program(textwrap.dedent(source), **limits)


def assert_gone(pid: int, grace_s: float = 2.0) -> None:
    """The process has exited; a zombie counts (it runs no code) until whoever inherited it reaps it."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as file:
                alive = file.read().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return
        if not alive:
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


def test_a_program_that_runs_to_its_end_passes():
    result = run(
        """
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        assert __name__ == "__main__"
        print("hello")
        """
    )
    assert (result.status, result.passed, result.exception) == ("passed", True, None)
    assert result.stdout == "hello\n"
    assert result.status in SANDBOX_STATUSES
    assert result.isolation["user"] == "same"


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

daemon_file, sleeper_file = {daemon_file!r}, {sleeper_file!r}

def write_atomically(path, text):
    with open(path + ".tmp", "w") as file:
        file.write(text)
    os.rename(path + ".tmp", path)

if os.fork() == 0:
    os.setsid()  # leave the process group, then orphan a grandchild on purpose
    if os.fork() == 0:
        write_atomically(daemon_file, str(os.getpid()))
        while True:
            time.sleep(0.05)
    os._exit(0)
sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
write_atomically(sleeper_file, str(sleeper.pid))
while not os.path.exists(daemon_file):
    time.sleep(0.01)
{ending}
"""


@linux_only
@pytest.mark.parametrize(
    "ending, status", [("", "passed"), ("while True:\n    pass", "timeout")], ids=["finishes", "times-out"]
)
def test_no_descendant_survives_the_run_even_in_a_new_session(tmp_path, ending, status):
    daemon_file, sleeper_file = str(tmp_path / "daemon.pid"), str(tmp_path / "sleeper.pid")
    source = ESCAPING_CHILDREN.format(daemon_file=daemon_file, sleeper_file=sleeper_file, ending=ending)
    result = run(source, timeout_s=1.5)
    assert result.status == status
    for path in (daemon_file, sleeper_file):
        with open(path) as file:
            assert_gone(int(file.read()))


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


def test_the_program_runs_in_a_fresh_directory_that_is_removed_afterwards(tmp_path):
    cwd_file = tmp_path / "cwd"
    result = run(
        f"""
        import os
        assert os.listdir(".") == []
        assert os.environ["HOME"] == os.getcwd()
        with open("scratch.txt", "w") as file:
            file.write("data")
        with open({str(cwd_file)!r}, "w") as file:
            file.write(os.getcwd())
        """
    )
    assert result.passed, result.exception
    sandbox_cwd = cwd_file.read_text()
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
def test_a_program_that_kills_its_parent_is_an_error_and_does_not_survive(tmp_path):
    pid_file = tmp_path / "program.pid"
    result = run(
        f"""
        import os, signal, time
        with open({str(pid_file)!r}, "w") as file:
            file.write(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)
        """,
        timeout_s=1.0,
    )
    assert (result.status, result.passed) == ("error", False)
    assert "SIGKILL" in result.exception
    assert result.duration_s < 5.0
    assert_gone(int(pid_file.read_text()))


@linux_only
def test_a_program_that_stops_its_parent_times_out_and_does_not_survive(tmp_path):
    pid_file = tmp_path / "program.pid"
    result = run(
        f"""
        import os, signal, time
        with open({str(pid_file)!r}, "w") as file:
            file.write(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGSTOP)
        time.sleep(30)
        """,
        timeout_s=0.5,
    )
    assert (result.status, result.passed) == ("timeout", False)
    assert result.duration_s < 10.0
    assert_gone(int(pid_file.read_text()))


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
def test_a_run_ends_with_the_program_even_if_a_descendant_keeps_its_output_open(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    result = run(
        f"""
        import subprocess
        sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # inherits stdout and stderr
        with open({str(pid_file)!r}, "w") as file:
            file.write(str(sleeper.pid))
        """,
        timeout_s=5.0,
    )
    assert result.passed, result.exception
    assert result.duration_s < 2.5
    assert_gone(int(pid_file.read_text()))


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
