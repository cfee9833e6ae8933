"""What interrupted runs leave in the cache folder, removed when it is certainly abandoned.

A model upload cut mid-way leaves ``models/<sha256>.part`` (the next put_model of that model resumes it), an agent
install cut mid-way leaves ``agent/<hash>.partial-<id>``, and an agent that was killed leaves ``run/<token>.pid``.
"""

import errno
import os
import shutil
import time

# A live upload or install writes every few seconds; one untouched for an hour was abandoned.
STALE_S = 3600.0
_MARKER = b"edgecompress_agent"  # in the command line of every agent (and of the shell that starts one)


def sweep(cache_dir, now=None):
    """At start-up: remove abandoned partial uploads and installs, and the pid files of agents that are gone."""
    now = time.time() if now is None else now
    for folder, is_partial in (("models", lambda n: n.endswith(".part")), ("agent", lambda n: ".partial-" in n)):
        folder = os.path.join(cache_dir, folder)
        for name in _names(folder):
            path = os.path.join(folder, name)
            if is_partial(name) and _age(path, now) > STALE_S:
                _remove(path)
    run = os.path.join(cache_dir, "run")
    for name in _names(run):
        path = os.path.join(run, name)
        if name.endswith(".pid"):
            pid = _read_pid(path)
            # An empty file may be one a starting agent is writing this instant: left until it is stale.
            if (pid is None and _age(path, now) > STALE_S) or (pid is not None and not _agent_alive(pid)):
                _remove(path)


def forget_pid(cache_dir, pid=None):
    """At exit: remove the pid files that name this process (a successor of the same host may have replaced it)."""
    pid = os.getpid() if pid is None else pid
    run = os.path.join(cache_dir, "run")
    for name in _names(run):
        path = os.path.join(run, name)
        if name.endswith(".pid") and _read_pid(path) == pid:
            _remove(path)


def _agent_alive(pid):
    try:
        with open("/proc/{}/cmdline".format(pid), "rb") as handle:
            return _MARKER in handle.read()  # a recycled pid now runs another program
    except (IOError, OSError):
        if os.path.isdir("/proc/self"):
            return False  # Linux: no such process
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _names(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _age(path, now):
    try:
        return now - os.path.getmtime(path)
    except OSError:
        return 0.0


def _read_pid(path):
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except (IOError, OSError):
        return None
    return int(text) if text.isdigit() else None


def _remove(path):
    """Remove a file or a folder; one that vanished or cannot be removed is left to the next start."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except OSError:
        pass
