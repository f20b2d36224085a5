"""Start ``python -m sgid`` processes in a fraction of a second: forked from a warm process that imported them once.

A fresh ``python -m sgid augment`` spends about 8 s of a 2-core machine importing torch, diffusers and transformers
before its first image, and the hostile-condition tests start one for every signal, lock and full disk they try.
A *zygote* (the name Android gives the same trick) imports what a run imports once, computes nothing (so no
OpenMP thread pool exists to break in a fork), and forks one child per command. The child is a real process: its
own pid, stdio, working folder, environment, resource limits, and SIGINT handled as in a terminal; it runs ``sgid``'s
``__main__`` as ``python -m sgid`` does and ends the way an interpreter ends (exit code, threads joined, atexit
handlers, streams flushed; an uncaught exception's traceback and code 1; death by a signal), less the second an
interpreter spends tearing down the modules of torch and its kind. Signals go to its pid; its exit status comes back
from the zygote, which is its parent. :class:`Child` answers like a :class:`subprocess.Popen`.

What a fork cannot give is the import-time state of another environment, so a zygote forks only commands whose
environment differs from its own in ``SGID_*`` variables alone (sgid reads those when it runs); for another
environment :func:`current` starts another zygote. ``tests/hostile.py`` starts a real subprocess where a test asks
for a ``preexec_fn`` or another ``Popen`` option.
``tests/test_cli.py`` starts the real console script and ``python -m sgid`` the ordinary way.

Run as a script (``python tests/zygote.py FD``) this file is the zygote itself: it serves requests on the
``SOCK_SEQPACKET`` socket ``FD`` until the test process closes it.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

#: Variables read when a command runs, not when the zygote imports: a command may differ from the zygote in these.
#: sgid's own; Ray's (``ray.init`` in a test process sets them, ``ray.shutdown`` takes them back; the zygote does not
#: import ray, a child that uses it does); and what Python and torch read only when asked (breakpoint(), inductor).
RUNTIME_VARIABLES = ("SGID_", "RAY_")
IGNORED_VARIABLES = ("PYTEST_CURRENT_TEST", "PYTHONBREAKPOINT", "TORCHINDUCTOR_CACHE_DIR")
#: What ``sgid augment`` imports before its first image (the zygote imports these and nothing runs).
WARM_MODULES = ("sgid.cli", "sgid.pipeline", "sgid.models.loading", "sgid.stages.bundle")
#: Keys of a saved model's JSON files that name a transformers class (besides "architectures").
TRANSFORMERS_CLASS_KEYS = ("processor_class", "image_processor_type", "tokenizer_class")


# -- the test process's side ----------------------------------------------------------------------------------
class Child:
    """A forked ``sgid`` process, with the parts of :class:`subprocess.Popen` the tests use."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str], stderr: IO[bytes] | None) -> None:
        self.zygote = zygote
        self.pid = pid
        self.args = args
        self.stdin = None
        self.stdout = None
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.pump(0)
            self.returncode = self.zygote.exits.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.zygote.pump(0.05 if left is None else min(0.05, left))
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[None, bytes | None]:
        """Read stderr to its end (when piped), then wait for the exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        data = b""
        if self.stderr is not None:
            fd = self.stderr.fileno()
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                chunk = self.stderr.read1(65536)
                if not chunk:
                    break
                data += chunk
            self.stderr.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return None, data if self.stderr is not None else None

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The warm process (``python tests/zygote.py FD``) and the socket it takes commands on."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = dict(env)
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.socket = ours
        self.exits: dict[int, int] = {}
        self._started: list[int] = []
        self.ready = self._receive(timeout=300).get("ready", False)

    def compatible(self, env: dict[str, str]) -> bool:
        """Whether a command with environment ``env`` sees what a fresh interpreter would (see the module doc)."""
        names = set(env) | set(self.env)
        differ = {name for name in names if env.get(name) != self.env.get(name)}
        return all(name.startswith(RUNTIME_VARIABLES) or name in IGNORED_VARIABLES for name in differ)

    def start(self, args: list[str], env: dict[str, str], *, rlimits: dict[str, tuple[int, int]]) -> Child:
        read_end, write_end = os.pipe()
        request = {"args": args, "env": env, "cwd": os.getcwd(), "rlimits": rlimits}
        with open(os.devnull, "rb") as devnull:
            socket.send_fds(self.socket, [json.dumps(request).encode()], [devnull.fileno(), 1, write_end])
        os.close(write_end)
        while not self._started:
            self.pump(None)
        return Child(self, self._started.pop(0), ["sgid", *args], os.fdopen(read_end, "rb"))

    def pump(self, timeout: float | None) -> None:
        """Take in what the zygote said (children started and ended), waiting up to ``timeout`` for the first."""
        while True:
            ready, _, _ = select.select([self.socket], [], [], timeout)
            if not ready:
                return
            message = self._receive(timeout=0)
            if "started" in message:
                self._started.append(message["started"])
            elif "exited" in message:
                self.exits[message["exited"]] = message["returncode"]
            timeout = 0

    def _receive(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.socket], [], [], timeout)
        data = self.socket.recv(1 << 16) if ready else b""
        if not data:
            raise RuntimeError(f"the sgid zygote stopped answering (exit code {self.process.poll()})")
        return json.loads(data)

    def close(self) -> None:
        self.socket.close()  # the zygote kills what is left of its children and exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


_zygote: Zygote | None = None


def current(env: dict[str, str]) -> Zygote:
    """The zygote for commands with environment ``env``: the running one, or (started on first use, and again when
    the test process's environment has changed in what a fresh interpreter would see, as ``ray.init`` changes it)
    a new one."""
    global _zygote
    if _zygote is None or not _zygote.compatible(env):
        if _zygote is not None:
            _zygote.close()
        _zygote = Zygote(env)
    return _zygote


def start(args: list[str], env: dict[str, str], *, rlimits: dict[str, tuple[int, int]] | None = None) -> Child | None:
    """``python -m sgid ARGS`` forked from the zygote of ``env``, stderr piped; None where no zygote can fork safely
    (another thread running in it: then start a real subprocess)."""
    zygote = current(env)
    if not zygote.ready:
        return None
    return zygote.start(args, env, rlimits=rlimits or {})


@atexit.register
def _close() -> None:
    if _zygote is not None:
        _zygote.close()


# -- the zygote's side ----------------------------------------------------------------------------------------
def serve(channel: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """Fork a child per request until the test process hangs up. Returns only in a child: (request, its fds)."""
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([channel], [], [], 0.02)
        while children:  # reap, and say who ended (waitstatus as Popen.returncode: -N for signal N)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            channel.send(json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())
        if not ready:
            continue
        message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
        if not message:  # the test process is done: nothing outlives it
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            return None
        pid = os.fork()
        if pid == 0:
            channel.close()
            return json.loads(message), fds
        children.add(pid)
        for fd in fds:
            os.close(fd)
        channel.send(json.dumps({"started": pid}).encode())


def become(request: dict[str, Any], fds: list[int]) -> None:
    """Turn this fork into ``python -m sgid ARGS`` with the request's stdio, folder, environment, limits; SIGINT as
    in a terminal."""
    import io
    import resource
    import runpy
    import threading

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    # the standard streams as a fresh interpreter makes them: stderr line-buffered, stdout so only on a terminal
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "rb", closefd=False)))
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "wb", closefd=False)), line_buffering=os.isatty(1)
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "wb", closefd=False)), errors="backslashreplace", line_buffering=True
    )
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # as ``python -m`` has it (the zygote's was this file's folder)
    os.environ.clear()
    os.environ.update(request["env"])
    for name, (soft, hard) in request["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's foreground job starts
    sys.argv = ["sgid", *request["args"]]
    try:
        runpy.run_module("sgid", run_name="__main__", alter_sys=True)  # sys.exit(main())
        code = 0
    except SystemExit as stop:  # as the interpreter reads it; an exception or Ctrl-C goes on to end it the usual way
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    # The interpreter's own ending, less the teardown of every module torch, diffusers and transformers brought
    # (about a second, and nothing of sgid's runs there): threads joined, atexit handlers, streams flushed.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def warm() -> None:
    """Import, computing nothing, what a run of the test models imports lazily: sgid's commands, and every class the
    saved test models name (diffusers and transformers import a model's code when it is first asked for)."""
    import importlib
    import pkgutil

    import diffusers
    import transformers

    import sgid.commands
    from sgid.models.loading import default_cache_dir

    for found in pkgutil.iter_modules(sgid.commands.__path__):
        importlib.import_module(f"sgid.commands.{found.name}")
    libraries = {"diffusers": diffusers, "transformers": transformers}
    for path in sorted((default_cache_dir() / "tiny-models").glob("*/*/**/*.json")):
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        named = [tuple(v) for v in config.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
        named += [("diffusers", config.get("_class_name"))]
        named += [("transformers", config.get(key)) for key in TRANSFORMERS_CLASS_KEYS]
        named += [("transformers", name) for name in config.get("architectures") or []]
        for library, name in named:
            if library in libraries and isinstance(name, str):
                try:
                    getattr(libraries[library], name)
                except Exception:  # noqa: BLE001  (a name this version lacks: the run would not need it either)
                    pass


def main() -> None:
    channel = socket.socket(fileno=int(sys.argv[1]))
    import importlib
    import threading

    for name in WARM_MODULES:
        importlib.import_module(name)
    warm()
    assert "ray" not in sys.modules, "the zygote imported ray: RAY_* variables are no longer read at run time"
    # A fork copies one thread: with another Python thread running, a child could inherit a lock held forever.
    # (numpy's OpenBLAS starts a native thread pool on import; it re-creates it after a fork by itself.)
    alone = threading.active_count() == 1
    channel.send(json.dumps({"ready": alone}).encode())
    if not alone:
        channel.recv(1)
        return
    child = serve(channel)
    if child is not None:
        become(*child)


if __name__ == "__main__":
    main()
