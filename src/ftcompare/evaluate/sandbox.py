"""Run untrusted generated Python in a separate, limited, network-less process and report how it ended.

One run, on Linux::

    harness (run_program, any thread)
      └─ supervisor: `python -S -s -P supervisor.pyc ...` (this file, compiled once per harness process),
         a session of its own, child subreaper, in a fresh network namespace; writes records (Python
         literals) on stdout
           └─ program: a fork of the supervisor (so one interpreter start per run) under rlimits, cwd and
              HOME in a throw-away directory, stdin /dev/null, stdout/stderr piped to the supervisor,
              which keeps OUTPUT_CAP_BYTES of each and discards the rest; it runs the source as __main__

Only the program's process can vouch for a pass: after the program's last line ran with no uncaught
exception it writes a per-run nonce, with its own pid, to a result pipe. Exit codes are never trusted.
When the program ends or its time is up, the supervisor SIGKILLs and reaps every process below itself
(orphans, even ones that called setsid(), are re-parented to it), and the harness SIGKILLs the
supervisor's process group, which also covers a program that killed or stopped its supervisor. Elsewhere
than Linux only that process-group kill is available.

This stops accidents and naive gaming (early exits, runaway loops, fork bombs, memory bombs, floods of
output, stray daemons), not an adversary that inspects the interpreter's memory for the nonce, kills the
supervisor after leaving the process group, or uses root rights to act outside the sandbox: processes run
as the calling user, without a filesystem of their own.

The supervisor's part of this file comes first and imports only what it needs: run as a script, the file
stops before the harness's imports, which would cost each run more than the interpreter's own start-up.
"""

from __future__ import annotations

import math
import os
import resource
import select
import sys
import time
from _signal import SIGKILL  # not `signal`: it imports enum, which costs the supervisor ~8 ms a run

SANDBOX_STATUSES = ("passed", "failed", "timeout", "memory", "error")

OUTPUT_CAP_BYTES = 4096  # kept from the head of stdout and of stderr; the rest is counted, then dropped
_RESULT_CAP_BYTES = 65536  # the program's report is small; flooding the result pipe only hurts the flooder
_MESSAGE_CAP_CHARS = 2000  # of the text of the exception the program raised
_FILE_SIZE_LIMIT_MB = 64  # RLIMIT_FSIZE: the largest file a program may write
_PROCESS_BUDGET = 256  # RLIMIT_NPROC headroom over the tasks the user already runs (not root only)
_SUPERVISOR_GRACE_S = 5.0  # the harness's own timeout is timeout_s plus this (start-up, kill, drain)
_KILL_WINDOW_S = 2.0  # the longest the supervisor keeps killing leftovers before reporting anyway
_DRAIN_S = 1.0  # the longest it reads output still in the pipes once everything is killed
_POLL_S = 0.02  # how often to look for the program's exit where no pidfd can signal it
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_ON_LINUX = sys.platform.startswith("linux")
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


# ---- supervisor side (runs as `python -S -s -P supervisor.pyc PROGRAM_PATH WORKDIR TIMEOUT_S MEMORY_MB`) -


class _Capture:
    """The head of one stream: the first cap_bytes are kept, the rest only counted."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.head = bytearray()
        self.total_bytes = 0
        self.at_eof = False

    def feed(self, chunk: bytes) -> None:
        self.head += chunk[: max(0, self.cap_bytes - len(self.head))]
        self.total_bytes += len(chunk)

    def text(self) -> str:
        dropped = self.total_bytes - len(self.head)
        note = f"\n[... truncated: {dropped} more bytes]" if dropped else ""
        return self.head.decode("utf-8", errors="replace") + note


def _supervise() -> None:
    """Supervisor entry point: the request in argv; an isolation record, then a result record, on stdout.

    Nothing on the way from here to the fork may catch exceptions or clean up: the forked program leaves
    through these frames by SystemExit, so that its interpreter ends as `python PROGRAM` would."""
    program_path, workdir = sys.argv[1:3]
    timeout_s, memory_mb = float(sys.argv[3]), int(sys.argv[4])
    limits = _program_limits(timeout_s, memory_mb)
    isolation = _isolate_supervisor()
    _emit({"kind": "isolation", **isolation, "user": "same", "limits": _describe_limits(limits)})
    _emit({"kind": "result", **_run_supervised(program_path, workdir, timeout_s, limits)})


def _emit(record: dict) -> None:
    """One record as a line on stdout; ascii() keeps it one line, and the harness reads it back with
    ast.literal_eval (json would cost the supervisor ~15 ms of imports)."""
    data = (ascii(record) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _isolate_supervisor() -> dict:
    """Become the reaper of whatever the program orphans, and give this process (so every child) a
    network namespace of its own; return what could be put in force."""
    if not _ON_LINUX:
        return {"network": "none", "user_namespace": False, "kill": "process-group"}
    import ctypes  # here, not above: the harness never needs it

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
        tasks = sum(threads for _, _, uid, threads in _read_process_table() if uid == os.geteuid())
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


def _run_supervised(program_path: str, workdir: str, timeout_s: float, limits: dict) -> dict:
    """Fork the program under `limits`, wait for it (or its deadline), kill everything it left, and return
    {"report": the nonce-verified report or None, "timed_out", "returncode", "stdout", "stderr"}."""
    nonce = os.urandom(16).hex()
    (stdout_read, stdout_write), (stderr_read, stderr_write) = os.pipe(), os.pipe()
    result_read, result_write = os.pipe()  # close-on-exec: programs the sample starts do not inherit it
    deadline = time.monotonic() + timeout_s
    pid = os.fork()
    if pid == 0:
        _become_program(program_path, workdir, limits, nonce, stdout_write, stderr_write, result_write)
    for fd in (stdout_write, stderr_write, result_write):
        os.close(fd)
    stdout, stderr = _Capture(OUTPUT_CAP_BYTES), _Capture(OUTPUT_CAP_BYTES)
    result = _Capture(_RESULT_CAP_BYTES)
    captures = {stdout_read: stdout, stderr_read: stderr, result_read: result}
    status = _pump(captures, deadline, pid=pid)
    timed_out = status is None  # the program may have closed its pipes and kept running
    if timed_out:
        os.kill(pid, SIGKILL)
        status = os.waitpid(pid, 0)[1]
    if _ON_LINUX:  # only after the wait: the reaping in there must not take the program's exit status
        _kill_descendants(time.monotonic() + _KILL_WINDOW_S)
    _pump(captures, time.monotonic() + _DRAIN_S)
    for fd in captures:
        os.close(fd)
    return {
        "report": _verified_report(bytes(result.head), nonce, pid),
        "timed_out": timed_out,
        "returncode": os.waitstatus_to_exitcode(status),
        "stdout": stdout.text(),
        "stderr": stderr.text(),
    }


def _become_program(
    program_path: str, workdir: str, limits: dict, nonce: str, stdout_fd: int, stderr_fd: int, result_fd: int
) -> None:
    """In the forked child: take the capture pipes as stdout and stderr (stdin is the supervisor's
    /dev/null), close every other descriptor but the result pipe, move to workdir, apply the rlimits and
    run the program; never returns (see _run_as_main)."""
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.closerange(3, result_fd)  # the supervisor's pipes to the harness are 1 and 2, replaced above
    os.closerange(result_fd + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir(workdir)
    for which, values in limits.items():
        resource.setrlimit(which, values)
    _run_as_main(program_path, result_fd, nonce)


def _run_as_main(path: str, result_fd: int, nonce: str) -> None:
    """Run the source at `path` as __main__ in this process, write "NONCE PID returned" or "NONCE PID
    raised TYPES MESSAGE" (both hex-encoded) to result_fd, then leave by SystemExit (0, or 1 after the
    traceback), so that threads are joined, atexit handlers run and output is flushed as after `python
    PROGRAM`. The pid is read when reporting, so a forked child that runs on reports its own."""
    import site  # -S skipped it at start-up; here only for the paths and exit()/quit() below

    # Bound before the program runs, so a program patching os, sys or BaseException cannot alter the report.
    write, getpid = os.write, os.getpid
    print_exception, with_traceback = sys.__excepthook__, BaseException.with_traceback
    sys.path.extend(site.getsitepackages())  # installed packages import, without running .pth hooks
    site.setquit()  # exit() and quit(), as in a normal interpreter
    main = type(sys)("__main__")
    main.__file__ = path
    sys.modules["__main__"] = main
    sys.argv = [path]
    try:
        with open(path, "rb") as file:
            code = compile(file.read(), path, "exec")
        exec(code, main.__dict__)
    except BaseException as exc:
        types = "\0".join(c.__name__ for c in type(exc).__mro__)  # a class name never holds NUL
        report = f"raised {_to_hex(types)} {_to_hex(_describe(exc))}"
        write(result_fd, f"\n{nonce} {getpid()} {report}\n".encode())
        # The printer shows the exception's own traceback, so this frame is cut from that.
        print_exception(type(exc), exc, with_traceback(exc, exc.__traceback__.tb_next).__traceback__)
        raise SystemExit(1) from None
    write(result_fd, f"\n{nonce} {getpid()} returned\n".encode())
    raise SystemExit(0)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)[:_MESSAGE_CAP_CHARS]
    except BaseException:
        return "<str() failed>"


def _to_hex(text: str) -> str:
    return str.encode(text, "utf-8", "surrogatepass").hex()


def _from_hex(data: bytes) -> str:
    return bytes.fromhex(data.decode("ascii")).decode("utf-8", "surrogatepass")


def _pump(captures: dict[int, _Capture], deadline: float, pid: int | None = None) -> int | None:
    """Read what the pipes in `captures` offer until each is at EOF or the deadline passes; given the pid
    of a child, until that child exits instead. Return the child's wait status, None if it still runs."""
    poller = select.poll()
    open_fds = [fd for fd, capture in captures.items() if not capture.at_eof]
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    pidfd = _open_pidfd(pid) if pid is not None else None
    if pidfd is not None:  # readable once the child exits, so the poll below needs no timeout of its own
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            if pid is not None:
                exited, status = os.waitpid(pid, os.WNOHANG)
                if exited:
                    return status
            elif not open_fds:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait_s = remaining if pid is None or pidfd is not None else min(remaining, _POLL_S)
            for fd, _ in poller.poll(wait_s * 1000):
                if fd == pidfd:
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    captures[fd].feed(chunk)
                else:
                    captures[fd].at_eof = True
                    poller.unregister(fd)
                    open_fds.remove(fd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
        return None


def _verified_report(data: bytes, nonce: str, pid: int) -> dict | None:
    """The program's report among the lines of the result pipe: the one carrying this run's nonce and the
    program's own pid (a forked child that ran on to the end of the program does not count), as
    {"outcome": "returned"} or {"outcome": "raised", "types": [...], "message": str}."""
    prefix = f"{nonce} {pid} ".encode()
    for line in data.splitlines():
        if not line.startswith(prefix):
            continue
        fields = line[len(prefix) :].split(b" ")
        if fields == [b"returned"]:
            return {"outcome": "returned"}
        if len(fields) == 3 and fields[0] == b"raised":
            try:
                return {"outcome": "raised", "types": _from_hex(fields[1]).split("\0"),
                        "message": _from_hex(fields[2])}
            except ValueError:
                continue
    return None


def _read_process_table() -> list[tuple[int, int, int, int]]:
    """(pid, ppid, uid, threads) of every process in /proc; ones that exit while it is read are left out."""
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
        table.append((int(name), int(fields[1]), uid, int(fields[17])))
    return table


def _descendants(ancestor: int) -> list[int]:
    """Pids of every process below `ancestor`, zombies included."""
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in _read_process_table():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [ancestor]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


def _kill_descendants(deadline: float) -> None:
    """SIGKILL and reap every process below this one until none is left or the deadline passes.

    Repeated because a process may fork between the listing and the kill: its child, orphaned by the
    kill, is re-parented to this process (the subreaper) and found by the next pass. A subreaper with no
    child has no descendant either, so a program that left nothing costs no look at /proc."""
    while _reap_children() and time.monotonic() < deadline:
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(_POLL_S / 4)


def _reap_children() -> bool:
    """Reap the children that have exited; return whether any child is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


if __name__ == "__main__":
    _supervise()
    os._exit(0)  # every record went out by os.write; skip the harness's part and the interpreter's teardown


# ---- harness side -------------------------------------------------------------------------------------

import ast  # noqa: E402  (the harness's imports; see the module docstring)
import functools  # noqa: E402
import importlib.util  # noqa: E402
import marshal  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402


def _compile_supervisor(path: str) -> bytes:
    """The file at `path` compiled, as a .pyc that `python FILE.pyc` runs: compiling the source in every
    supervisor would cost each run ~10 ms. The header's source timestamp is left zero; nothing checks it
    for a pyc run directly."""
    with open(path, "rb") as file:
        code = compile(file.read(), path, "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


# Compiled once, at import: every supervisor then matches this harness, even if the file is edited while
# a long evaluation runs.
_SUPERVISOR_PYC = _compile_supervisor(os.path.abspath(__file__))


@dataclass(frozen=True)
class SandboxResult:
    """How one program ended.

    status: one of SANDBOX_STATUSES. passed: status == "passed", which only the program's nonce can earn.
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

    report: the program's nonce-verified report, {"outcome": "returned"} or {"outcome": "raised", "types":
    [the exception's class and its bases, by name], "message": str}; None if the program never reported.
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
        supervisor_path = os.path.join(root, "supervisor.pyc")
        with open(supervisor_path, "wb") as file:
            file.write(_SUPERVISOR_PYC)
        stdout, stderr, returncode, timed_out = _call_supervisor(
            supervisor_path, program_path, workdir, timeout_s, memory_mb
        )
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


# -P (3.11+) keeps the script's folder off sys.path; on 3.10 that folder is the run's own throw-away dir
_SAFE_PATH_FLAG = ("-P",) if sys.version_info >= (3, 11) else ()


def _call_supervisor(
    supervisor_path: str, program_path: str, workdir: str, timeout_s: float, memory_mb: int
) -> tuple[bytes, bytes, int, bool]:
    """Run one supervisor (this file, compiled, at supervisor_path) to the end; (its stdout, its stderr,
    its exit status, whether we timed it out).

    Its whole process group is SIGKILLed afterwards, whatever happened inside."""
    # The supervisor's environment is the program's, which inherits it with the interpreter: -S -s -P is
    # -I -S without -E, since the environment is ours alone and -E would void PYTHONHASHSEED.
    env = {"PATH": _SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    with subprocess.Popen(
        [sys.executable, "-S", "-s", *_SAFE_PATH_FLAG, supervisor_path, program_path, workdir, repr(float(timeout_s)),
         str(memory_mb)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    ) as supervisor:
        try:
            stdout, stderr = supervisor.communicate(timeout=timeout_s + _SUPERVISOR_GRACE_S)
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
    """(the first isolation record, the last result record) among the supervisor's lines.

    The first isolation record was written before the program started and the last result record after
    every process below the supervisor was dead, so neither can be one a program forged."""
    isolation, result = None, None
    for line in stdout.splitlines():
        try:
            record = ast.literal_eval(line.decode("ascii"))
        except Exception:  # noqa: BLE001  (not a record: anything a program wrote there, however odd)
            continue
        if isinstance(record, dict) and record.get("kind") == "isolation" and isolation is None:
            isolation = {key: value for key, value in record.items() if key != "kind"}
        elif isinstance(record, dict) and record.get("kind") == "result":
            result = record
    return isolation or {}, result


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_tree(path: str) -> None:
    """Delete a sandbox directory even if the program made parts of it unwritable."""
    try:
        shutil.rmtree(path)
    except OSError:
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
