"""Run untrusted generated Python in a separate, limited, network-less process and report how it ended.

One run, on Linux::

    harness (run_program, any thread)
      └─ supervisor: `python -I -S sandbox.py`, a session of its own, child subreaper, in a fresh network
         namespace; reads one JSON request on stdin, writes JSON records on stdout
           └─ program: `python -S -s -P -c _WRAPPER ...` under rlimits, cwd and HOME in a throw-away
              directory, stdin /dev/null, stdout/stderr piped to the supervisor, which keeps
              OUTPUT_CAP_BYTES of each and discards the rest

Only the wrapper can vouch for a pass: after the program's last line ran with no uncaught exception it
writes a per-run nonce, which it read (and closed) from a pipe before the program started, to a result
pipe. Exit codes are never trusted. When the program ends or its time is up, the supervisor SIGKILLs and
reaps every process below itself (orphans, even ones that called setsid(), are re-parented to it), and
the harness SIGKILLs the supervisor's process group, which also covers a program that killed or stopped
its supervisor. Elsewhere than Linux only that process-group kill is available.

This stops accidents and naive gaming (early exits, runaway loops, fork bombs, memory bombs, floods of
output, stray daemons), not an adversary that inspects the interpreter's memory for the nonce, kills the
supervisor after leaving the process group, or uses root rights to act outside the sandbox: processes run
as the calling user, without a filesystem of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

SANDBOX_STATUSES = ("passed", "failed", "timeout", "memory", "error")

OUTPUT_CAP_BYTES = 4096  # kept from the head of stdout and of stderr; the rest is counted, then dropped
_RESULT_CAP_BYTES = 65536  # the wrapper's report is small; flooding the result pipe only hurts the flooder
_FILE_SIZE_LIMIT_MB = 64  # RLIMIT_FSIZE: the largest file a program may write
_PROCESS_BUDGET = 256  # RLIMIT_NPROC headroom over the tasks the user already runs (not root only)
_SUPERVISOR_GRACE_S = 5.0  # the harness's own timeout is timeout_s plus this (start-up, kill, drain)
_KILL_WINDOW_S = 2.0  # the longest the supervisor keeps killing leftovers before reporting anyway
_DRAIN_S = 1.0  # the longest it reads output still in the pipes once everything is killed
_POLL_S = 0.02
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_ON_LINUX = sys.platform.startswith("linux")
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_THIS_FILE = os.path.abspath(__file__)

# The program's entry point: `python -c _WRAPPER NONCE_FD RESULT_FD PROGRAM_PATH`. The helpers it reports
# with are bound before the program runs, so a program patching json or os cannot rewrite the report.
_WRAPPER = """\
import os, site, sys, traceback, types
from json import dumps
from os import getpid, write


def describe(exc):
    try:
        return str(exc)[:2000]
    except BaseException:
        return "<str() failed>"


def run_and_report(nonce_fd, result_fd, path):
    with open(nonce_fd, "rb") as pipe:  # closed here: the program never sees the nonce's pipe
        nonce = pipe.read().decode()
    os.set_inheritable(result_fd, False)  # programs the sample starts get no result pipe
    sys.path.extend(site.getsitepackages())  # installed packages import, without running .pth hooks
    site.setquit()  # exit() and quit(), as in a normal interpreter
    main = types.ModuleType("__main__")
    main.__file__ = path
    sys.modules["__main__"] = main
    sys.argv = [path]
    error = None
    try:
        with open(path, "rb") as file:
            code = compile(file.read(), path, "exec")
        exec(code, main.__dict__)
    except BaseException as exc:
        error = exc
        record = {"outcome": "raised", "types": [c.__name__ for c in type(exc).__mro__],
                  "message": describe(exc)}
    else:
        record = {"outcome": "returned"}
    write(result_fd, ("\\n" + dumps({"nonce": nonce, "pid": getpid(), **record}) + "\\n").encode())
    if error is not None:
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        sys.exit(1)


run_and_report(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
"""


@dataclass(frozen=True)
class SandboxResult:
    """How one program ended.

    status: one of SANDBOX_STATUSES. passed: status == "passed", which only the wrapper's nonce can earn.
    stdout, stderr: the first OUTPUT_CAP_BYTES of each (UTF-8, undecodable bytes replaced), with a note of
    how much was dropped. exception: "Type: message" of what the program raised, or why the run failed.
    isolation: what was in force: network ("namespace" | "none"), user_namespace, user ("same": privileges
    are never dropped), kill ("subreaper" | "process-group") and limits.
    """

    status: str
    passed: bool
    stdout: str
    stderr: str
    duration_s: float
    exception: str | None
    isolation: dict

    def __post_init__(self) -> None:
        if self.status not in SANDBOX_STATUSES:
            raise ValueError(f"status must be one of {SANDBOX_STATUSES}, got {self.status!r}")
        if self.passed != (self.status == "passed"):
            raise ValueError(f"passed={self.passed} contradicts status={self.status!r}")


def classify_outcome(report: dict | None, *, timed_out: bool, returncode: int) -> tuple[str, str | None]:
    """Status and exception text of one run, from the facts the supervisor gathered.

    report: the wrapper's nonce-verified record, {"outcome": "returned"} or {"outcome": "raised", "types":
    [the exception's class and its bases, by name], "message": str}; None if the wrapper never reported.
    timed_out: the wall-time limit ran out. returncode: the program's exit status, negative for a signal.
    A run that reported "returned" passed even if it then lingered (say in a thread) past the limit.
    """
    if report is not None and report["outcome"] == "returned":
        return "passed", None
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout", None
    if report is not None:
        types = report["types"]
        exception = f"{types[0]}: {report['message']}" if report["message"] else types[0]
        if "SyntaxError" in types:
            return "error", exception
        if "MemoryError" in types:
            return "memory", exception
        return "failed", exception
    return "error", f"the program {_describe_exit(returncode)} before its last line"


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run one Python program (a module's source) in the sandbox and report how it ended.

    timeout_s: wall time for the program (CPU time is capped a little above it as a backstop).
    memory_mb: its address-space limit. The call itself takes at most about timeout_s + 5 s.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not memory_mb > 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="ftcompare-sandbox-")
    try:
        program_path = os.path.join(root, "program.py")
        with open(program_path, "w", encoding="utf-8", errors="surrogatepass") as file:
            file.write(source)  # undecodable text then fails to compile, as a SyntaxError
        workdir = os.path.join(root, "work")
        os.mkdir(workdir)
        request = {"program_path": program_path, "workdir": workdir, "timeout_s": timeout_s,
                   "memory_mb": memory_mb}
        stdout, stderr, returncode, timed_out = _call_supervisor(request, timeout_s + _SUPERVISOR_GRACE_S)
    finally:
        _remove_tree(root)
    return _to_result(stdout, stderr, returncode, timed_out, time.monotonic() - started)


def run_programs(
    sources: Sequence[str], *, timeout_s: float, memory_mb: int, workers: int = 2
) -> list[SandboxResult]:
    """run_program for each source, `workers` at a time; results in the order of `sources`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    run = functools.partial(run_program, timeout_s=timeout_s, memory_mb=memory_mb)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, sources))


# ---- harness side -------------------------------------------------------------------------------------


def _call_supervisor(request: dict, timeout_s: float) -> tuple[bytes, bytes, int, bool]:
    """Run one supervisor to the end; (its stdout, its stderr, its exit status, whether we timed it out).

    Its whole process group is SIGKILLed afterwards, whatever happened inside."""
    with subprocess.Popen(
        [sys.executable, "-I", "-S", _THIS_FILE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},
        start_new_session=True,
    ) as supervisor:
        try:
            stdout, stderr = supervisor.communicate(json.dumps(request).encode(), timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:  # e.g. the program SIGSTOPped its supervisor
            _kill_group(supervisor.pid)
            stdout, stderr = supervisor.communicate()
            timed_out = True
        finally:
            _kill_group(supervisor.pid)
    return stdout, stderr, supervisor.returncode, timed_out


def _to_result(
    stdout: bytes, stderr: bytes, returncode: int, timed_out: bool, duration_s: float
) -> SandboxResult:
    """SandboxResult from what the supervisor wrote, how it ended, and how long the whole run took."""
    isolation, result = _parse_records(stdout)
    program_stdout = program_stderr = ""
    if timed_out:
        status, exception = "timeout", "the sandbox supervisor did not finish in time"
    elif returncode != 0 or result is None:
        # A result record is not trusted here: a program that killed its supervisor could have written
        # one into the supervisor's stdout (through /proc/<pid>/fd/1) first.
        status, exception = "error", f"the sandbox supervisor {_describe_exit(returncode)}"
        if stderr.strip():  # its last words, such as the exception of a supervisor bug
            exception += ": " + stderr.decode(errors="replace").strip().splitlines()[-1]
    else:
        status, exception = classify_outcome(
            result["report"], timed_out=result["timed_out"], returncode=result["returncode"]
        )
        program_stdout, program_stderr = result["stdout"], result["stderr"]
    return SandboxResult(
        status=status,
        passed=status == "passed",
        stdout=program_stdout,
        stderr=program_stderr,
        duration_s=duration_s,
        exception=exception,
        isolation=isolation,
    )


def _parse_records(stdout: bytes) -> tuple[dict, dict | None]:
    """(the first isolation record, the last result record) among the supervisor's JSON lines.

    The first isolation record was written before the program started and the last result record after
    every process below the supervisor was dead, so neither can be one a program forged."""
    isolation, result = None, None
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == "isolation" and isolation is None:
            isolation = {key: value for key, value in record.items() if key != "kind"}
        elif isinstance(record, dict) and record.get("kind") == "result":
            result = record
    return isolation or {}, result


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _remove_tree(path: str) -> None:
    """Delete a sandbox directory even if the program made parts of it unwritable."""
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):  # chmod follows links; a link may point anywhere
                os.chmod(child, 0o700)
    shutil.rmtree(path)


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


# ---- supervisor side (runs as `python -I -S sandbox.py`) ------------------------------------------------


@dataclass
class _Capture:
    """The head of one stream: the first cap_bytes are kept, the rest only counted."""

    cap_bytes: int
    head: bytearray = field(default_factory=bytearray)
    total_bytes: int = 0
    at_eof: bool = False

    def feed(self, chunk: bytes) -> None:
        self.head += chunk[: max(0, self.cap_bytes - len(self.head))]
        self.total_bytes += len(chunk)

    def text(self) -> str:
        dropped = self.total_bytes - len(self.head)
        note = f"\n[... truncated: {dropped} more bytes]" if dropped else ""
        return self.head.decode("utf-8", errors="replace") + note


class _Process(NamedTuple):
    pid: int
    ppid: int
    uid: int
    threads: int


def _supervise() -> None:
    """Supervisor entry point: the request on stdin; an isolation record, then a result record, on stdout."""
    request = json.load(sys.stdin)
    limits = _program_limits(request["timeout_s"], request["memory_mb"])
    isolation = _isolate_supervisor()
    _emit({"kind": "isolation", **isolation, "user": "same", "limits": _describe_limits(limits)})
    _emit({"kind": "result", **_run_supervised(request, limits)})


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _isolate_supervisor() -> dict:
    """Become the reaper of whatever the program orphans, and give this process (so every child) a
    network namespace of its own; return what could be put in force."""
    if not _ON_LINUX:
        return {"network": "none", "user_namespace": False, "kill": "process-group"}
    libc = ctypes.CDLL(None, use_errno=True)
    subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    # As root a network namespace is one call; otherwise an unprivileged user namespace grants the right.
    # This process is single-threaded, as unshare(CLONE_NEWUSER) requires.
    user_namespace = False
    network = libc.unshare(_CLONE_NEWNET) == 0
    if not network:
        network = user_namespace = libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0
    return {
        "network": "namespace" if network else "none",
        "user_namespace": user_namespace,
        "kill": "subreaper" if subreaper else "process-group",
    }


def _program_limits(timeout_s: float, memory_mb: int) -> dict[int, tuple[int, int]]:
    """rlimits for the program, {resource: (soft, hard)}, never above the hard limits already in force."""
    cpu_s = math.ceil(timeout_s) + 1
    wanted = {
        resource.RLIMIT_AS: (memory_mb * 2**20,) * 2,
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.RLIMIT_FSIZE: (_FILE_SIZE_LIMIT_MB * 2**20,) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    # RLIMIT_NPROC counts all the user's tasks and does not bind root; a root fork bomb is bounded only by
    # the wall-time limit and the supervisor's kill.
    if _ON_LINUX and os.geteuid() != 0:
        tasks = sum(p.threads for p in _read_process_table() if p.uid == os.geteuid())
        wanted[resource.RLIMIT_NPROC] = (tasks + _PROCESS_BUDGET,) * 2
    limits = {}
    for which, (soft, hard) in wanted.items():
        current_hard = resource.getrlimit(which)[1]
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        limits[which] = (min(soft, hard), hard)
    return limits


def _describe_limits(limits: dict[int, tuple[int, int]]) -> dict:
    return {
        "memory_mb": limits[resource.RLIMIT_AS][0] // 2**20,
        "cpu_s": limits[resource.RLIMIT_CPU][0],
        "file_size_mb": limits[resource.RLIMIT_FSIZE][0] // 2**20,
        "processes": limits[resource.RLIMIT_NPROC][0] if resource.RLIMIT_NPROC in limits else None,
    }


def _apply_limits(limits: dict[int, tuple[int, int]]) -> None:
    for which, values in limits.items():
        resource.setrlimit(which, values)


def _run_supervised(request: dict, limits: dict[int, tuple[int, int]]) -> dict:
    """Run the program under `limits`, wait for it (or its deadline), kill everything it left, and return
    {"report": the nonce-verified wrapper record or None, "timed_out", "returncode", "stdout", "stderr"}."""
    nonce = secrets.token_hex(16)
    nonce_read, nonce_write = os.pipe()
    os.write(nonce_write, nonce.encode())  # far below a pipe's buffer, so this never blocks
    os.close(nonce_write)
    result_read, result_write = os.pipe()
    workdir = request["workdir"]
    env = {"PATH": _SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    deadline = time.monotonic() + request["timeout_s"]
    # -S -s -P is -I -S without -E: the environment is ours alone, and -E would void PYTHONHASHSEED.
    # preexec_fn is safe here: this process is single-threaded.
    with subprocess.Popen(
        [sys.executable, "-S", "-s", "-P", "-c", _WRAPPER, str(nonce_read), str(result_write),
         request["program_path"]],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(nonce_read, result_write),
        preexec_fn=functools.partial(_apply_limits, limits),
    ) as program:
        os.close(nonce_read)
        os.close(result_write)
        stdout, stderr = _Capture(OUTPUT_CAP_BYTES), _Capture(OUTPUT_CAP_BYTES)
        result = _Capture(_RESULT_CAP_BYTES)
        captures = {program.stdout.fileno(): stdout, program.stderr.fileno(): stderr, result_read: result}
        _pump(captures, deadline, stop=lambda: program.poll() is not None)
        try:  # the program may have closed its pipes and kept running
            returncode = program.wait(timeout=max(0.0, deadline - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            program.kill()
            returncode = program.wait()
            timed_out = True
        if _ON_LINUX:  # only after the wait: the reaping in there must not take the program's exit status
            _kill_descendants(time.monotonic() + _KILL_WINDOW_S)
        _pump(captures, time.monotonic() + _DRAIN_S, stop=lambda: False)
    os.close(result_read)
    return {
        "report": _verified_report(bytes(result.head), nonce, program.pid),
        "timed_out": timed_out,
        "returncode": returncode,
        "stdout": stdout.text(),
        "stderr": stderr.text(),
    }


def _pump(captures: dict[int, _Capture], deadline: float, stop: Callable[[], bool]) -> None:
    """Read what the pipes in `captures` offer until each is at EOF, stop() holds or the deadline passes."""
    with selectors.DefaultSelector() as selector:
        for fd, capture in captures.items():
            if not capture.at_eof:
                selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not stop() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(min(remaining, _POLL_S)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    captures[key.fd].feed(chunk)
                else:
                    captures[key.fd].at_eof = True
                    selector.unregister(key.fd)


def _verified_report(data: bytes, nonce: str, pid: int) -> dict | None:
    """The wrapper's record among the lines of the result pipe: the one carrying this run's nonce and the
    program's own pid (a forked child that ran on to the end of the program does not count)."""
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("nonce") == nonce and record.get("pid") == pid:
            return {key: value for key, value in record.items() if key not in ("nonce", "pid")}
    return None


def _read_process_table() -> list[_Process]:
    """Every process in /proc; ones that exit while it is read are left out."""
    table = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{name}").st_uid
            with open(f"/proc/{name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses; the fields after the last ")" are
        # state, ppid, ... with num_threads 17 places after ppid.
        fields = stat[stat.rindex(b")") + 2 :].split()
        table.append(_Process(pid=int(name), ppid=int(fields[1]), uid=uid, threads=int(fields[17])))
    return table


def _descendants(ancestor: int) -> list[int]:
    """Pids of every process below `ancestor`, zombies included."""
    children = defaultdict(list)
    for process in _read_process_table():
        children[process.ppid].append(process.pid)
    found, frontier = [], [ancestor]
    while frontier:
        below = children[frontier.pop()]
        found += below
        frontier += below
    return found


def _kill_descendants(deadline: float) -> None:
    """SIGKILL and reap every process below this one until none is left or the deadline passes.

    Repeated because a process may fork between the listing and the kill: its child, orphaned by the
    kill, is re-parented to this process (the subreaper) and found by the next pass."""
    while (pids := _descendants(os.getpid())) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(_POLL_S / 4)
        _reap_children()


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    _supervise()
