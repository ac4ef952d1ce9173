"""The parameter-server launcher (d2lbn.launch): environment, ports, printed multi-host commands, and
what happens when a process dies or the launcher is interrupted. Everything binds to 127.0.0.1 on
ports found free at launch time; every test is bounded in time and checks, by a token in the
environment that every child inherits, that no process of its job is left behind."""
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from d2lbn import launch as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- pure functions ------------------------------------------------------------------------------

def test_free_ports_are_distinct_sorted_and_bindable_on_localhost():
    ports = L.free_ports(5)
    assert len(set(ports)) == 5 and ports == sorted(ports)
    for port in ports:
        with socket.socket() as s:
            s.bind((L.LOCALHOST, port))
    assert L.free_ports(0) == []
    with pytest.raises(ValueError, match="n must be"):
        L.free_ports(-1)


def test_role_env_names_the_role_and_the_scheduler():
    env = L.role_env("worker", "127.0.0.1", 9000, num_workers=2, num_servers=1, node_port=9100,
                     node_host="127.0.0.1")
    assert env == {"DMLC_ROLE": "worker", "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000",
                   "DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "1", "DMLC_NODE_HOST": "127.0.0.1",
                   "PORT": "9100"}
    with pytest.raises(ValueError, match="role"):
        L.role_env("boss", "127.0.0.1", 9000, 1, 1)
    with pytest.raises(ValueError, match="num_workers"):
        L.role_env("worker", "127.0.0.1", 9000, 0, 1)


def test_launch_draws_every_port_at_once_so_that_none_coincide(monkeypatch):
    """The scheduler's port is drawn with the others (a port released before the others are
    drawn could be handed out again); nothing is started: the first start fails."""
    calls, envs = [], []
    real = L.free_ports

    def recording_free_ports(n, host=L.LOCALHOST):
        calls.append(n)
        return real(n, host)

    def failing_start(proc, *args):             # records each process; the last fails
        envs.append(dict(proc.env))
        if len(envs) == 1 + 2 + 3:
            raise OSError(2, "not started (test)")

    monkeypatch.setattr(L, "free_ports", recording_free_ports)
    monkeypatch.setattr(L, "_start", failing_start)
    with pytest.raises(L.LaunchError, match="cannot start worker 2"):
        L.launch(["true"], 3, num_servers=2)
    assert calls == [1 + 2 + 3]
    assert [e["DMLC_ROLE"] for e in envs] == ["scheduler"] + ["server"] * 2 + ["worker"] * 3
    root = int(envs[0]["DMLC_PS_ROOT_PORT"])
    servers = [int(e["PORT"]) for e in envs[1:3]]
    workers = [int(e["PORT"]) for e in envs[3:]]
    assert len({root, *servers, *workers}) == 6, "every port differs"
    assert servers == sorted(servers) and workers == sorted(workers)
    assert all(int(e["DMLC_PS_ROOT_PORT"]) == root for e in envs)


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="command"):
        L.launch("python train.py", 2)
    with pytest.raises(ValueError, match="command"):
        L.launch([], 2)
    with pytest.raises(ValueError, match="num_workers"):
        L.launch(["true"], 0)
    with pytest.raises(ValueError, match="num_servers"):
        L.launch(["true"], 1, num_servers=True)


# Two made-up hosts and their addresses (192.0.2.0/24 is reserved for documentation, RFC 5737);
# any other name fails to resolve, as an unknown host does.
FAKE_DNS = {"node-a": "192.0.2.1", "node-b": "192.0.2.2"}


def _fake_gethostbyname(name):
    if name in FAKE_DNS:
        return FAKE_DNS[name]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_hostfile_commands_place_scheduler_servers_and_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(L.socket, "gethostbyname", _fake_gethostbyname)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode-a\n\nnode-b  # second\n")
    hosts = L.read_hostfile(str(hostfile))
    assert hosts == ["node-a", "node-b"]
    lines = L.hostfile_commands(["python", "-m", "d2lbn", "train", "--kvstore", "dist_sync"], 3, 2,
                                hosts, port=9200, workdir="/srv/book")
    assert len(lines) == 1 + 2 + 3
    expected = [("node-a", "scheduler"), ("node-a", "server"), ("node-b", "server"),
                ("node-a", "worker"), ("node-b", "worker"), ("node-a", "worker")]
    for line, (host, role) in zip(lines, expected):
        assert line.startswith(f"ssh -o StrictHostKeyChecking=no {host} ") and line.endswith(" &")
        assert f"DMLC_ROLE={role}" in line
        # ssh gets the name, every process the scheduler's address (ZeroMQ binds no host name)
        assert "DMLC_PS_ROOT_URI=192.0.2.1 " in line and "DMLC_PS_ROOT_PORT=9200" in line
        assert "DMLC_PS_ROOT_URI=node-a" not in line
        assert "DMLC_NUM_WORKER=3" in line and "DMLC_NUM_SERVER=2" in line
        assert "cd /srv/book" in line
        assert ("python -m d2lbn train --kvstore dist_sync" in line) == (role == "worker")
        assert ("import mxnet" in line) == (role != "worker")


def _remote_env(line: str) -> dict:
    """The environment a printed ``ssh HOST 'cd DIR && env K=V ... CMD' &`` line sets."""
    remote = shlex.split(shlex.split(line)[4])
    assert remote[2:4] == ["&&", "env"], remote
    env = {}
    for word in remote[4:]:
        if "=" not in word:                 # the command starts
            break
        name, value = word.split("=", 1)
        env[name] = value
    return env


def test_hostfile_commands_resolve_the_scheduler_host_to_its_ipv4_address():
    # a host name that resolves on every machine: /etc/hosts names 127.0.0.1 localhost
    lines = L.hostfile_commands(["python", "train.py"], 1, 1, ["localhost"], port=9200)
    assert len(lines) == 3
    for line in lines:
        assert line.startswith("ssh -o StrictHostKeyChecking=no localhost ")
        assert _remote_env(line)["DMLC_PS_ROOT_URI"] == "127.0.0.1"
    # a numeric address is kept as it is (and needs no name service)
    lines = L.hostfile_commands(["python", "train.py"], 2, 1, ["192.0.2.7", "192.0.2.8"])
    assert {_remote_env(line)["DMLC_PS_ROOT_URI"] for line in lines} == {"192.0.2.7"}


def test_hostfile_commands_refuse_a_scheduler_host_that_does_not_resolve(tmp_path, capsys):
    # .invalid never resolves (RFC 6761)
    with pytest.raises(ValueError, match=r"scheduler's host 'node-a\.invalid' .*does not resolve"):
        L.hostfile_commands(["python", "train.py"], 1, 1, ["node-a.invalid", "localhost"])
    from d2lbn.__main__ import main
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a.invalid\nnode-b.invalid\n")
    assert main(["launch", "-n", "2", "--hostfile", str(hostfile), "--", "python", "t.py"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "no command is printed"
    assert captured.err.startswith("error: the scheduler's host 'node-a.invalid'")
    assert "IP address" in captured.err


def test_hostfile_commands_refuse_a_loopback_scheduler_with_other_hosts():
    with pytest.raises(ValueError, match=r"'localhost' .*127\.0\.0\.1, a loopback address.*192\.0\.2\.2"):
        L.hostfile_commands(["python", "train.py"], 2, 1, ["localhost", "192.0.2.2"])
    # all on the first host: loopback is fine
    assert len(L.hostfile_commands(["python", "train.py"], 2, 1, ["localhost", "localhost"])) == 4


def _scheduler(env: dict, token: str) -> subprocess.Popen:
    return subprocess.Popen(L.SERVER_COMMAND, cwd=ROOT, env={**_env(token), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_printed_scheduler_command_listens_where_a_host_name_fails_to_bind():
    """The scheduler line printed for host ``localhost``, run here without ssh, listens on its
    port; the same environment with DMLC_PS_ROOT_URI=localhost stops at once: MXNet 1.9.1's
    ZeroMQ binds no host name."""
    port = L.free_port()
    line = L.hostfile_commands(["python", "t.py"], 1, 1, ["localhost"], port=port)[0]
    env = _remote_env(line)
    assert env["DMLC_ROLE"] == "scheduler" and env["DMLC_PS_ROOT_URI"] == "127.0.0.1"
    token = uuid.uuid4().hex
    named = _scheduler({**env, "DMLC_PS_ROOT_URI": "localhost"}, token)     # the old command
    try:
        out, _ = named.communicate(timeout=120)
    finally:
        _kill_group(named)
    assert named.returncode != 0 and "bind failed" in out, out[-2000:]
    scheduler = _scheduler(env, token)
    try:
        deadline, listening = time.monotonic() + 120, False
        while not listening and time.monotonic() < deadline and scheduler.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                listening = True
            except OSError:
                time.sleep(0.2)
        assert listening and scheduler.poll() is None, scheduler.poll()
    finally:
        _kill_group(scheduler)
    _assert_none_left(token)


def test_read_hostfile_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        L.read_hostfile(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="names no host"):
        L.read_hostfile(str(empty))


def test_cli_hostfile_prints_commands_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(L.socket, "gethostbyname", _fake_gethostbyname)
    from d2lbn.__main__ import main
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a\nnode-b\n")
    assert main(["launch", "-n", "2", "--hostfile", str(hostfile), "--", "python", "train.py"]) == 0
    out = capsys.readouterr().out
    ssh = [line for line in out.splitlines() if line.startswith("ssh ")]
    assert len(ssh) == 4 and "python train.py" in ssh[-1] and out.rstrip().endswith("wait")
    assert main(["launch", "-n", "0", "--", "python", "train.py"]) == 2
    assert "--num-workers must be a positive integer" in capsys.readouterr().err


# ---- processes -----------------------------------------------------------------------------------

CLI = "import sys; from d2lbn.__main__ import main; sys.exit(main(sys.argv[1:]))"
# A worker that says its pid and waits (the scheduler and the server wait for it meanwhile);
# it does not import mxnet, which keeps these tests short.
WAITING_WORKER = "import os, time; print('ready pid', os.getpid(), flush=True); time.sleep(120)"


def _env(token: str = "") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER"):
        env.pop(name, None)
    if token:
        env["D2LBN_TEST_TOKEN"] = token
    return env


def _processes_with(token: str) -> list:
    """Pids of live processes whose environment holds D2LBN_TEST_TOKEN=token."""
    found = []
    needle = f"D2LBN_TEST_TOKEN={token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as s:
                        if s.read().split(")")[-1].split()[0] != "Z":      # zombies are gone already
                            found.append(int(entry))
        except OSError:
            continue
    return found


def _assert_none_left(token: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(token) == [], "processes of the job were left behind"


class _Launcher:
    """``python -m d2lbn launch ...`` as a subprocess; its stdout read line by line in a thread."""

    def __init__(self, args, token):
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "launch", *args], cwd=ROOT,
                                     env=_env(token), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines, self.token = [], token
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [line for line in list(self.lines) if predicate(line)]
            if hits:
                return hits
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"timed out; launcher output so far: {self.lines}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _processes_with(self.token):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_two_waiting_workers():
    token = uuid.uuid4().hex
    job = _Launcher(["-n", "2", "--", sys.executable, "-c", WAITING_WORKER], token)
    ready = job.wait_for(lambda line: "ready pid" in line, timeout=90)
    while len(ready) < 2:
        ready = job.wait_for(lambda line: "ready pid" in line, timeout=30) if len(ready) < 2 else ready
        if len(ready) < 2:
            time.sleep(0.2)
    return job, ready


def test_a_killed_worker_stops_the_job_within_10_s():
    job, ready = _start_two_waiting_workers()
    try:
        assert {line.split("]")[0] for line in ready} == {"[worker 0", "[worker 1"}
        pid = int(next(line for line in ready if line.startswith("[worker 1]")).split()[-1])
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        job.proc.wait(timeout=15)
        elapsed = time.monotonic() - start
        stderr = job.proc.stderr.read()
        assert elapsed < 10, f"the launcher took {elapsed:.1f} s to notice"
        assert job.proc.returncode != 0
        assert f"worker 1 (pid {pid}) was killed by SIGKILL" in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
        _assert_none_left(job.token)
    finally:
        job.stop()


def test_sigint_to_the_launcher_stops_every_process():
    job, _ = _start_two_waiting_workers()
    try:
        job.proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        job.proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        stderr = job.proc.stderr.read()
        assert job.proc.returncode == 128 + signal.SIGINT
        assert "interrupted by SIGINT" in stderr and "stopped 4 running processes" in stderr, stderr
        _assert_none_left(job.token)
    finally:
        job.stop()


def test_a_command_that_fails_at_once_reports_the_workers_error():
    token = uuid.uuid4().hex
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "d2lbn", "launch", "-n", "2", "--", sys.executable,
                          "-m", "d2lbn", "train", "--kvstore", "dist_sync", "--epochs", "0"],
                         capture_output=True, text=True, timeout=90, cwd=ROOT, env=_env(token))
    assert time.monotonic() - start < 60
    assert run.returncode == 2                                   # the worker's exit status
    assert "] python -m d2lbn train: error: argument --epochs: must be a positive integer" in run.stdout
    assert run.stderr.startswith("launch: worker ") and "exited with status 2" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    _assert_none_left(token)


def test_a_command_that_does_not_exist_is_one_line(capsys):
    from d2lbn.__main__ import main
    assert main(["launch", "-n", "1", "--", "/nonexistent/python", "train.py"]) == 127
    err = capsys.readouterr().err
    assert err.startswith("launch: cannot start worker 0 (/nonexistent/python train.py)") and "No such file" in err


# ---- round three (issue 25): output closed, SIGHUP, open-file limit, printed commands -------------

# A worker that prints for ever, and one that also starts a child of its own (same group) and waits.
CHATTY_WORKER = ("import itertools\nfor i in itertools.count():\n"
                 "    print('line', i, 'x' * 100, flush=True)")
PARENT_WORKER = ("import os, subprocess, sys, time\n"
                 "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                 "print('ready pid', os.getpid(), 'child', child.pid, flush=True)\n"
                 "time.sleep(120)")


def _kill_token(token: str) -> None:
    for pid in _processes_with(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_launcher_output_closed_early_ends_the_job_without_hanging(tmp_path):
    """`launch ... | head -1`: the launcher's stdout goes away while a worker keeps printing. Before
    the fix the copying thread died of BrokenPipeError, the worker filled its pipe, and the job hung."""
    token = uuid.uuid4().hex
    err, status = tmp_path / "stderr", tmp_path / "status"
    launcher = " ".join(shlex.quote(a) for a in [sys.executable, "-c", CLI, "launch", "-n", "1", "--",
                                                 sys.executable, "-c", CHATTY_WORKER])
    script = f"{launcher} 2>{shlex.quote(str(err))} | head -1; echo ${{PIPESTATUS[0]}} >{shlex.quote(str(status))}"
    try:
        run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=_env(token))
    except subprocess.TimeoutExpired:
        pytest.fail("the launcher hung after its output was closed")
    finally:
        _kill_token(token)
    assert run.stdout.startswith("[worker 0] line 0 "), run.stdout
    stderr = err.read_text()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "output was closed" in stderr, stderr
    assert int(status.read_text()) == 128 + signal.SIGPIPE
    _assert_none_left(token)


def test_sighup_to_the_launcher_stops_workers_and_their_children():
    """The terminal closes (SIGHUP): before the fix the launcher died at once, its children died
    with it (PR_SET_PDEATHSIG) but the workers' own children kept running."""
    token = uuid.uuid4().hex
    job = _Launcher(["-n", "2", "--", sys.executable, "-c", PARENT_WORKER], token)
    try:
        ready = job.wait_for(lambda line: "ready pid" in line, timeout=90)
        while len(ready) < 2:
            time.sleep(0.2)
            ready = job.wait_for(lambda line: "ready pid" in line, timeout=30)
        children = [int(line.split()[-1]) for line in ready]
        assert all(pid in _processes_with(token) for pid in children)     # the grandchildren run
        job.proc.send_signal(signal.SIGHUP)
        job.proc.wait(timeout=15)
        stderr = job.proc.stderr.read()
        assert job.proc.returncode == 128 + signal.SIGHUP, stderr
        assert "interrupted by SIGHUP" in stderr and "stopped 4 running processes" in stderr, stderr
        _assert_none_left(token)
    finally:
        job.stop()


def test_more_processes_than_the_open_file_limit_allows_is_one_line():
    """`launch -n 1500` under the usual limit of 1024 open files: before the fix a 27-line OSError
    traceback (Too many open files) from the middle of starting the job."""
    import resource
    token = uuid.uuid4().hex

    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    try:
        run = subprocess.run([sys.executable, "-c", CLI, "launch", "-n", "1500", "--", sys.executable,
                              "-c", "pass"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=_env(token), preexec_fn=limit_files)
    finally:
        _kill_token(token)
    assert run.returncode == 1, run.stderr
    line = one_line(run.stderr)
    assert "1500 workers" in line and "open files" in line and "1024" in line, line
    assert "ulimit -n" in line, line
    assert run.stdout == ""
    _assert_none_left(token)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# NumPy 1.24 removed the alias numpy.bool that mxnet 1.9.1 reads at import; this prelude makes
# NumPy 1.23 behave so (its module __getattr__ answers 'bool' with the 1.24 AttributeError).
NUMPY_124 = ("import numpy\n_getattr = numpy.__getattr__\n"
             "def _no_bool(name):\n"
             "    if name == 'bool':\n"
             "        raise AttributeError(\"module 'numpy' has no attribute 'bool'\")\n"
             "    return _getattr(name)\n"
             "numpy.__getattr__ = _no_bool\nvars(numpy).pop('bool', None)\n")


def test_hostfile_server_and_scheduler_commands_work_under_numpy_124(tmp_path, monkeypatch):
    """The printed scheduler/server commands ran `python -c 'import mxnet'`, which fails under
    NumPy >= 1.24 (numpy.bool is gone); the local launcher already restored the alias first."""
    monkeypatch.setattr(L.socket, "gethostbyname", _fake_gethostbyname)
    lines = L.hostfile_commands(["python", "-m", "d2lbn", "train", "--kvstore", "dist_sync"], 1, 1,
                                ["node-a"], port=9200, workdir=str(tmp_path))
    checked = 0
    for line in lines[:2]:                            # the scheduler's and the server's
        ssh = shlex.split(line)
        assert ssh[:4] == ["ssh", "-o", "StrictHostKeyChecking=no", "node-a"] and ssh[-1] == "&"
        remote = shlex.split(ssh[4])
        assert remote[:4] == ["cd", str(tmp_path), "&&", "env"]
        argv = [a for a in remote[4:] if "=" not in a or a.startswith("import")]
        assert argv[:2] == ["python", "-c"], argv
        # run the printed code here, under the NumPy 1.24 stand-in and without DMLC_ROLE (so that
        # importing mxnet returns instead of becoming a server)
        run = subprocess.run([sys.executable, "-c", NUMPY_124 + argv[2]], capture_output=True,
                             text=True, timeout=120, env=_env())
        assert run.returncode == 0, run.stderr[-800:]
        checked += 1
    # the stand-in is faithful: the bare import fails under it
    bare = subprocess.run([sys.executable, "-c", NUMPY_124 + "import mxnet"], capture_output=True,
                          text=True, timeout=120, env=_env())
    assert bare.returncode != 0 and "has no attribute 'bool'" in bare.stderr
    assert checked == 2
