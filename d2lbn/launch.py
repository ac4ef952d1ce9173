"""Start MXNet's parameter server here: scheduler, servers, workers as child processes (ch07, appendix).

``python -m d2lbn launch -n 2 [-s 1] -- python -m d2lbn train --kvstore dist_sync ...``
does what MXNet's ``tools/launch.py --launcher local`` does, with the care a book's test
suite needs:

* every process gets the ``DMLC_*`` environment of its role (:func:`role_env`); the
  scheduler and the servers run ``python -c 'import mxnet'`` (importing MXNet with
  ``DMLC_ROLE=server`` or ``scheduler`` runs that role and, when the job ends, exits the
  process: ``sys.exit()`` in ``mxnet/kvstore/kvstore_server.py``; the import never
  returns), the workers run the command;
* everything listens on 127.0.0.1 only, on distinct ports found free at launch time
  (:func:`free_ports`, all drawn together), the scheduler's first, then the servers' and
  the workers' in increasing order, so that the rank the scheduler assigns (it sorts
  nodes by port) is the worker's launch index;
* each output line is prefixed with the process's role and rank, ``[worker 1] ...``;
* MXNet's synchronous engine (``MXNET_ENGINE_TYPE=NaiveEngine``) unless the environment
  names another: with the default threaded engine, training through ``dist_sync`` gave
  wrong weights in three of nine trial runs here (one worker; MXNet 1.9.1, CPU), always
  right with the naive one;
* if any process dies with an error, or the launcher gets Ctrl-C (SIGINT), SIGTERM or
  SIGHUP (its terminal closed), every other process is stopped (SIGTERM, then SIGKILL after a grace period), one line
  says which process failed and how, and the launcher returns non-zero; each child runs
  in its own process group and is told by the kernel to die with the launcher
  (``PR_SET_PDEATHSIG``), so none is left behind;
* more processes than the open-file limit (``ulimit -n``) allows are refused in one line
  before anything starts;
* if the launcher's own output goes away (``... | head -1``), it keeps reading every
  process's output (so none blocks on a full pipe), stops the job the same way and exits
  with 141 (128 + SIGPIPE) after one line on stderr.

With ``--hostfile FILE`` (one host per line) :func:`hostfile_commands` prints, instead
of running anything, the ``ssh`` command lines that start the same job on several
machines, the scheduler on the first host, with the first host's name resolved to its
IPv4 address for ``DMLC_PS_ROOT_URI`` (:func:`scheduler_address`). That is not what
MXNet's ssh launcher does (``tools/launch.py --launcher ssh``: dmlc-core's
``tracker/dmlc_tracker/ssh.py`` and ``tracker.py`` at the commit MXNet 1.9.1 pins,
5df8305): it starts the scheduler itself, on the submitting machine, and tells every
process that machine's own address (``get_host_ip``); only servers and workers go over
ssh (see :func:`hostfile_commands`).
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, IO, List, Optional, Sequence

__all__ = ["free_port", "free_ports", "role_env", "Process", "LaunchError", "launch",
           "launch_main", "main", "add_arguments", "run_args",
           "hostfile_commands", "read_hostfile", "scheduler_address", "LOCALHOST",
           "SERVER_COMMAND",
           "silence_stdout"]

LOCALHOST = "127.0.0.1"
#: What the scheduler and the servers run: importing mxnet with DMLC_ROLE set runs
#: the role. mxnet 1.9.1 reads ``numpy.bool``, gone from NumPy 1.24 on: restore it
#: first where it is missing, as ``d2lbn/__init__.py`` does.
SERVER_COMMAND = [sys.executable, "-c",
                  'import numpy; vars(numpy).setdefault("bool", bool); import mxnet']
#: Set in every process unless the environment already sets them (see the
#: module's docstring).
ENV_DEFAULTS = {"MXNET_ENGINE_TYPE": "NaiveEngine"}
#: Added to every command that ``--hostfile`` prints: the hosts start at different
#: moments, so a worker waits up to a minute for the scheduler (d2lbn.distributed).
HOSTFILE_ENV = {"D2LBN_SCHEDULER_WAIT": "60"}
#: Signals that make the launcher stop every process and exit (Ctrl-C; kill; the
#: terminal closing).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds between SIGTERM and SIGKILL when stopping the processes.
GRACE_SECONDS = 3.0
#: The launcher's exit status when its own output was closed (as if killed by SIGPIPE).
OUTPUT_CLOSED = 128 + signal.SIGPIPE


class LaunchError(RuntimeError):
    """A process of the job failed; ``returncode`` is what the launcher exits with."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's choice).
    """
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = LOCALHOST) -> List[int]:
    """``n`` distinct free TCP ports on ``host``, in increasing order (all held open
    until all are found, so they differ; released before returning, so another program
    could still take one)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}")
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return sorted(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def role_env(role: str, root_uri: str, root_port: int, num_workers: int,
             num_servers: int, node_port: Optional[int] = None,
             node_host: Optional[str] = None) -> Dict[str, str]:
    """The environment variables MXNet's parameter server reads, for one process.

    role: ``'scheduler'``, ``'server'`` or ``'worker'``; root_uri, root_port: where the
    scheduler listens; node_host, node_port: the address this server or worker listens
    on (``PORT``; the scheduler ranks workers, and servers, by increasing port).
    """
    if role not in ("scheduler", "server", "worker"):
        raise ValueError(f"role must be 'scheduler', 'server' or 'worker'; "
                         f"got {role!r}")
    for name, value in (("num_workers", num_workers), ("num_servers", num_servers)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    env = {"DMLC_ROLE": role,
           "DMLC_PS_ROOT_URI": root_uri, "DMLC_PS_ROOT_PORT": str(root_port),
           "DMLC_NUM_WORKER": str(num_workers), "DMLC_NUM_SERVER": str(num_servers)}
    if node_host is not None:
        env["DMLC_NODE_HOST"] = node_host
    if node_port is not None:
        env["PORT"] = str(node_port)
    return env


@dataclass
class Process:
    """One process of the job: its label (``'worker 1'``), command, and the
    running Popen."""
    role: str
    rank: int
    command: List[str]
    env: Dict[str, str]
    popen: Optional[subprocess.Popen] = None
    reader: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return "scheduler" if self.role == "scheduler" else f"{self.role} {self.rank}"

    def describe_exit(self) -> str:
        """``'worker 1 (pid 123) exited with status 2'`` or
        ``'... was killed by SIGKILL'``."""
        code = self.popen.returncode
        what = (f"was killed by {signal.Signals(-code).name}" if code < 0
                else f"exited with status {code}")
        return f"{self.label} (pid {self.popen.pid}) {what}"


try:                          # looked up once, in the launcher, not in the forked child
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None             # not Linux: the launcher still stops its children itself


def _die_with_parent() -> None:           # runs in the child between fork and exec
    if _PRCTL is not None:
        # PR_SET_PDEATHSIG: SIGKILL this child if the launcher dies
        _PRCTL(1, int(signal.SIGKILL))


def _pump(proc: Process, out: IO[str], lock: threading.Lock,
          output_gone: threading.Event) -> None:
    """Copy the process's output to ``out``, one prefixed line at a time.

    When ``out`` fails (its reader went away: ``... | head -1``, a closed terminal), set
    ``output_gone`` and keep reading the process's output to its end, discarding it, so
    that the process never blocks on a full pipe while the launcher stops the job."""
    prefix = f"[{proc.label}] "
    for raw in iter(proc.popen.stdout.readline, b""):
        if output_gone.is_set():
            continue
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        with lock:
            try:
                out.write(prefix + line + "\n")
                out.flush()
            except (OSError, ValueError):    # EPIPE, EIO, or a closed file object
                output_gone.set()
    proc.popen.stdout.close()


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that the interpreter's last flush of a
    ``sys.stdout`` whose reader has gone cannot print a ``BrokenPipeError`` at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _start(proc: Process, out: IO[str], lock: threading.Lock,
           output_gone: threading.Event) -> None:
    env = dict(os.environ)
    env.update(proc.env)
    env["PYTHONUNBUFFERED"] = "1"          # lines arrive as they are printed
    proc.popen = subprocess.Popen(proc.command, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=_die_with_parent)
    proc.reader = threading.Thread(target=_pump, args=(proc, out, lock, output_gone),
                                   daemon=True)


def _stop(procs: Sequence[Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every running process's group, wait up to ``grace`` seconds, then SIGKILL
    the rest."""
    running = [p for p in procs if p.popen is not None and p.popen.poll() is None]
    for p in running:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.popen is not None:
            _signal_group(p, signal.SIGKILL)   # also any grandchild left in the group
            p.popen.wait()
            if p.reader is not None and p.reader.is_alive():
                p.reader.join(timeout=1.0)


def _signal_group(p: Process, sig: int) -> None:
    try:
        os.killpg(p.popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _check_args(command: Sequence[str], num_workers: int,
                num_servers: int) -> List[str]:
    if (isinstance(command, str) or not command
            or not all(isinstance(c, str) for c in command)):
        raise ValueError(f"command must be a non-empty list of strings (the worker's "
                         f"argv); got {command!r}")
    for name, value in (("num_workers", num_workers), ("num_servers", num_servers)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    return list(command)


def _check_open_files(num_workers: int, num_servers: int) -> None:
    """Raise :class:`LaunchError` (one line) unless the open-file limit leaves room for the
    job: while starting it the launcher holds one socket per process (to find free
    ports), then one pipe per process (its output)."""
    try:
        import resource
    except ImportError:                       # not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 3
    processes = 1 + num_servers + num_workers
    needed = open_now + processes + 16        # a few more while each process starts
    if needed <= soft:
        return
    how = (f"raise it with ulimit -n {needed}" if hard == resource.RLIM_INFINITY or needed <= hard
           else f"the hard limit is {hard}, so have it raised")
    plural = lambda n, word: f"{n} {word}{'s' if n != 1 else ''}"    # noqa: E731
    raise LaunchError(f"launch: {plural(num_workers, 'worker')}, {plural(num_servers, 'server')} "
                      f"and the scheduler need about {needed} open files, but this process may "
                      f"open {soft} (ulimit -n): {how}, or start fewer workers", 1)


def launch(command: Sequence[str], num_workers: int, num_servers: int = 1, *,
           out: Optional[IO[str]] = None, env: Optional[Dict[str, str]] = None,
           timeout: Optional[float] = None, shutdown_seconds: float = 30.0) -> int:
    """Run ``command`` as ``num_workers`` workers of a parameter-server job
    on 127.0.0.1.


    Starts the scheduler, ``num_servers`` servers and the workers (worker k gets rank
    k), copies their output to ``out`` (default ``sys.stdout``) with a ``[role rank]``
    prefix, and returns 0 when every worker exits with 0. ``env``: extra environment
    variables for every process. Raises :class:`LaunchError` (message: which process
    failed and how; ``returncode``: the exit status the launcher should use) when a
    process fails, when ``timeout`` seconds pass, on KeyboardInterrupt/SIGTERM/SIGHUP,
    or when ``out`` can no longer be written (``returncode`` 141); every
    process has been stopped by then.
    """
    command = _check_args(command, num_workers, num_servers)
    _check_open_files(num_workers, num_servers)
    out = sys.stdout if out is None else out
    lock = threading.Lock()
    output_gone = threading.Event()
    # all ports drawn together, so that they differ (the scheduler's too); then servers
    # first, then workers, each with ports in increasing order: ranks follow launch order
    root_port, *ports = free_ports(1 + num_servers + num_workers)
    server_ports, worker_ports = ports[:num_servers], ports[num_servers:]
    common = dict(root_uri=LOCALHOST, root_port=root_port, num_workers=num_workers,
                  num_servers=num_servers)
    procs = [Process("scheduler", 0, SERVER_COMMAND, role_env("scheduler", **common))]
    procs += [Process("server", k, SERVER_COMMAND,
                      role_env("server", node_host=LOCALHOST, node_port=port, **common))
              for k, port in enumerate(server_ports)]
    workers = [Process("worker", k, command,
                       role_env("worker", node_host=LOCALHOST, node_port=port,
                                **common))
               for k, port in enumerate(worker_ports)]
    procs += workers
    for p in procs:
        p.env.update({k: v for k, v in ENV_DEFAULTS.items() if k not in os.environ})
        p.env.update(env or {})
    # Ctrl-C, SIGTERM and SIGHUP (the terminal closed) only set a flag that the loop
    # below reads at a safe point: a KeyboardInterrupt raised asynchronously inside
    # Popen.poll() can leave the Popen's internal wait lock held, and the wait() in _stop
    # would then block for ever.
    interrupted: List[str] = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = ({sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if in_main else {})

    def on_signal(signum, frame):
        interrupted.append(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, on_signal)
    start = time.monotonic()
    try:
        for p in procs:                    # every fork before any reader thread runs
            try:
                _start(p, out, lock, output_gone)
            except OSError as err:
                _stop(procs)
                raise LaunchError(f"launch: cannot start {p.label} "
                                  f"({' '.join(p.command)}): {err.strerror or err}",
                                  127) from None
        for p in procs:
            p.reader.start()
        finished_at = None
        while True:
            if interrupted:
                raise KeyboardInterrupt(interrupted[0])
            if output_gone.is_set():
                running = sum(p.popen.poll() is None for p in procs)
                _stop(procs)
                raise LaunchError(f"launch: the output was closed; stopped {running} "
                                  f"running process{'es' if running != 1 else ''}",
                                  OUTPUT_CLOSED)
            for p in procs:
                code = p.popen.poll()
                if code is not None and code != 0:
                    others = sum(q.popen.poll() is None for q in procs)
                    _stop(procs)
                    status = 128 - code if code < 0 else code
                    raise LaunchError(f"launch: {p.describe_exit()}; stopped the other "
                                      f"{others} process{'es' if others != 1 else ''}",
                                      status)
                if (code is None and p.role != "worker"
                        and all(w.popen.poll() == 0 for w in workers)):

                    finished_at = finished_at or time.monotonic()
                    # should exit by itself
                    if time.monotonic() - finished_at > shutdown_seconds:
                        _stop(procs)
                        return 0
            if all(p.popen.poll() == 0 for p in procs):
                for p in procs:
                    p.reader.join(timeout=5.0)
                return 0
            if timeout is not None and time.monotonic() - start > timeout:
                _stop(procs)
                raise LaunchError(f"launch: timed out after {timeout:g} s; stopped all "
                                  f"{len(procs)} processes", 124)
            time.sleep(0.05)
    except KeyboardInterrupt as interrupt:
        running = sum(p.popen is not None and p.popen.poll() is None for p in procs)
        _stop(procs)
        name = str(interrupt) if str(interrupt) in ("SIGTERM", "SIGHUP") else "SIGINT"
        code = 128 + signal.Signals[name]
        raise LaunchError(f"launch: interrupted by {name}; stopped {running} running "
                          f"process{'es' if running != 1 else ''}", code) from None
    except BaseException:
        _stop(procs)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# ---- several machines: print the commands --------------------------------------------

def read_hostfile(path: str) -> List[str]:
    """Hosts named in ``path``, one per line (``#`` starts a comment; blank lines are
    skipped)."""
    try:
        with open(path) as f:
            hosts = [line.split("#", 1)[0].strip() for line in f]
    except OSError as err:
        raise ValueError(f"hostfile {path!r} cannot be read: {err.strerror}") from None
    hosts = [h for h in hosts if h]
    if not hosts:
        raise ValueError(f"hostfile {path!r} names no host")
    for h in hosts:
        if any(c.isspace() for c in h) or h.startswith("-"):
            raise ValueError(f"hostfile {path!r}: {h!r} is not a host name")
    return hosts


def scheduler_address(hosts: Sequence[str]) -> str:
    """The numeric IPv4 address for ``DMLC_PS_ROOT_URI`` when the scheduler runs on
    ``hosts[0]`` (a host name or an address), resolved on this machine.

    The scheduler binds ``DMLC_PS_ROOT_URI`` through ZeroMQ, which for a bind accepts
    a numeric address or a network interface's name, never a host name: with
    ``localhost`` MXNet 1.9.1's scheduler stops at once ("bind failed"), with
    ``127.0.0.1`` it listens. MXNet's own ssh launcher passes an address too, but of
    the submitting machine, where it runs the scheduler (``get_host_ip`` in dmlc-core's
    tracker resolves that machine's own name with ``socket.gethostbyname``); this
    resolves the first host's name, where :func:`hostfile_commands` puts the scheduler.
    The address must be one every host reaches: a name that does not
    resolve here (say, one known only to ssh's configuration), or that resolves to a
    loopback address while other hosts take part, is refused (ValueError naming the
    host); write the first host's IP address in the hostfile then.
    """
    host = hosts[0]
    try:
        address = socket.gethostbyname(host)
    except (OSError, UnicodeError) as err:
        why = getattr(err, "strerror", None) or str(err)
        raise ValueError(f"the scheduler's host {host!r} (the first host) does not "
                         f"resolve to an IPv4 address here ({why}); the scheduler "
                         f"needs a numeric address: write the host's IP address "
                         f"instead") from None
    others = sorted({h for h in hosts[1:] if h != host})
    if address.startswith("127.") and others:
        raise ValueError(f"the scheduler's host {host!r} (the first host) resolves to "
                         f"{address}, a loopback address, which the other hosts "
                         f"({', '.join(others)}) cannot reach; write the address "
                         f"they reach it at instead")
    return address


def hostfile_commands(command: Sequence[str], num_workers: int, num_servers: int,
                      hosts: Sequence[str], port: int = 9091,
                      workdir: Optional[str] = None) -> List[str]:
    """Shell command lines (``ssh HOST '...'``) that start the job on several machines.

    The scheduler runs on the first host at ``port``, and every process is told the
    first host's numeric address (:func:`scheduler_address`: a host name is resolved
    here, ValueError if it cannot be); servers and workers are placed on the hosts in
    turn (round robin, each role from the first host), each with its ``DMLC_*``
    environment and no ``DMLC_NODE_HOST``; every host must reach that address and
    ``port`` and have the same Python environment and ``workdir`` (default: the current
    directory). ssh is given the names as written. Returns one line per process,
    scheduler first.

    MXNet's ssh launcher (MXNet 1.9.1's ``tools/launch.py --launcher ssh``, dmlc-core
    5df8305, ``tracker/dmlc_tracker/ssh.py`` and ``tracker.py``) differs: ``PSTracker``
    starts the scheduler on the submitting machine, not over ssh, at a port it finds free
    there from 9091 up, with ``DMLC_PS_ROOT_URI`` that machine's own address
    (``get_host_ip``: ``socket.gethostbyname(socket.getfqdn())``, or, if that is
    127.x, the address of the interface it would send from); it sends only the servers
    and then the workers over ssh, one counter over both (process ``i`` on host
    ``i % len(hosts)``), each with ``DMLC_NODE_HOST`` set to its host as written.
    """
    command = _check_args(command, num_workers, num_servers)
    hosts = list(hosts)
    if not hosts:
        raise ValueError("hosts must name at least one machine")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int in 1..65535; got {port!r}")
    workdir = workdir or os.getcwd()
    common = dict(root_uri=scheduler_address(hosts), root_port=port, num_workers=num_workers,
                  num_servers=num_servers)
    # the local launcher's server command, with the remote host's python: it restores the
    # numpy.bool alias mxnet 1.9.1 reads, so that it also works under NumPy >= 1.24
    server = " ".join(shlex.quote(c) for c in ["python", *SERVER_COMMAND[1:]])
    worker = " ".join(shlex.quote(c) for c in command)
    jobs = [("scheduler", hosts[0], role_env("scheduler", **common), server)]
    jobs += [("server", hosts[k % len(hosts)], role_env("server", **common), server)
             for k in range(num_servers)]
    jobs += [("worker", hosts[k % len(hosts)], role_env("worker", **common), worker)
             for k in range(num_workers)]
    lines = []
    for role, host, env, cmd in jobs:
        env = {**env, **ENV_DEFAULTS, **HOSTFILE_ENV}
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        remote = f"cd {shlex.quote(workdir)} && env {exports} {cmd}"
        lines.append(f"ssh -o StrictHostKeyChecking=no {shlex.quote(host)} "
                     f"{shlex.quote(remote)} &")
    return lines


def launch_main(command: Sequence[str], num_workers: int, num_servers: int = 1,
                hostfile: Optional[str] = None, port: int = 9091) -> int:
    """What ``python -m d2lbn launch`` does; returns the exit status (errors: one line
    on stderr)."""
    try:
        if hostfile is not None:
            lines = hostfile_commands(command, num_workers, num_servers,
                                      read_hostfile(hostfile), port)
            print("# start these on the first host (the scheduler's); each line runs "
                  "one process", flush=True)
            print("\n".join(lines) + "\nwait", flush=True)
            return 0
        return launch(command, num_workers, num_servers)
    except LaunchError as err:
        if err.returncode == OUTPUT_CLOSED:
            silence_stdout()
        try:
            print(str(err), file=sys.stderr, flush=True)
        except (OSError, ValueError):       # the terminal is gone too (SIGHUP)
            pass
        return err.returncode
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:                 # --hostfile's lines piped to head -1
        silence_stdout()
        return OUTPUT_CLOSED


def add_arguments(parser) -> None:
    """The options of ``python -m d2lbn launch`` (added to ``parser``, an argparse
    parser)."""
    parser.add_argument("-n", "--num-workers", type=int, required=True,
                        metavar="WORKERS",
                        help="number of worker processes (each runs the command)")
    parser.add_argument("-s", "--num-servers", type=int, default=1, metavar="SERVERS",
                        help="number of parameter servers (default 1)")
    parser.add_argument("--hostfile", metavar="FILE",
                        help="print the ssh commands that run the job on the hosts in "
                             "FILE (one per line; the scheduler on the first, given to "
                             "the others by its IP address) instead of running it here")
    parser.add_argument("--port", type=int, default=9091,
                        help="the scheduler's port with --hostfile (here: a free port "
                             "is found)")
    parser.add_argument("command", nargs="+", metavar="-- COMMAND",
                        help="what each worker runs, e.g. python -m d2lbn train "
                             "--kvstore dist_sync")


def run_args(args) -> int:
    """Run a parsed ``launch`` command line (see :func:`add_arguments`); returns the
    exit status."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    for name in ("num_workers", "num_servers"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be a positive integer; got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    if not command:
        print("error: give the workers' command after --", file=sys.stderr)
        return 2
    return launch_main(command, args.num_workers, args.num_servers, args.hostfile,
                       args.port)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m d2lbn.launch -n 2 -- COMMAND`` (the same as
    ``python -m d2lbn launch``)."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m d2lbn launch",
                                     description=__doc__.splitlines()[0])

    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
