"""One resumable run directory, shared by every training loop of ``meta_train``.

A run lives in a *workdir* holding ``config.json``, ``metrics.jsonl``,
``checkpoints/`` (orbax) and exported weights. :class:`RunDir` owns everything
that makes such a directory safe to kill, resume and share:

* **config check**: :meth:`RunDir.check_config` compares the run's config with
  the saved ``config.json`` (read-only, so it can run before anything is
  written); fields named ``resumable`` may differ (e.g. the number of steps).
  :meth:`RunDir.start` writes ``config.json`` once, after the caller has
  validated everything, and it is never rewritten.
* **lock**: entering the :class:`RunDir` takes ``<workdir>/run.lock`` (an
  ``fcntl`` lock on a file holding the holder's pid and host). A second process
  on the same workdir is refused at once with :class:`WorkdirLocked`; a lock
  left by a process that died is taken over.
* **metrics**: :class:`MetricsLog` drops a cut-off last line and the rows past
  the restored step on resume, rewriting the file atomically (temp + rename).
* **checkpoints**: :func:`restore_newest` restores the newest checkpoint that
  restores; a damaged newer one is moved to ``<workdir>/damaged_checkpoints/``
  and named in one line.
* **exports**: :func:`replace_dir` swaps a freshly written directory (weights)
  into place, so readers never see a half-written one.
* **ETA**: :class:`Eta` turns step counts into steps/s and time left.

Example::

  run = RunDir(workdir, config_dict, resumable=("steps",))
  run.check_config()                      # read-only, before anything else
  with run:                               # mkdir, lock
    ...                                   # build and validate everything
    run.start()                           # write config.json (first start only)
    mgr = run.checkpoint_manager(max_to_keep=2)
    restored = restore_newest(mgr, state, run.path, log=print)
    step, state = restored if restored else (0, state)
    run.metrics.truncate(step)
    ...
    run.metrics.append({"step": s, "loss": loss})
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TypeVar

import orbax.checkpoint as ocp

__all__ = ["ConfigMismatch", "Eta", "MetricsLog", "RunDir", "RunError", "WorkdirLocked",
           "atomic_write_text", "replace_dir", "restore_newest"]

T = TypeVar("T")
LOCK_NAME = "run.lock"
DAMAGED_DIR = "damaged_checkpoints"


class RunError(Exception):
  """A run cannot start or resume in its workdir (a user-facing, one-line problem)."""


class ConfigMismatch(RunError, ValueError):
  """The workdir holds a run with a different config."""


class WorkdirLocked(RunError):
  """Another live process holds the workdir's lock."""


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and ``os.replace``."""
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
  return json.loads(json.dumps(config))


class RunDir:
  """A run's workdir: config check, lock, ``config.json`` and ``metrics.jsonl``.

  Args:
    workdir: the run's directory (made absolute; created on entering).
    config: the run's JSON-serializable config.
    resumable: fields that may differ from the saved config when resuming.
    normalize: maps a saved config (possibly in an older format) to the current
      format before comparing; may raise ``ValueError``/``KeyError``/``TypeError``.
    is_main: this process writes files and takes the lock (process 0 of a
      multi-process run).
  """

  def __init__(self, workdir: str | os.PathLike, config: Mapping[str, Any], *,
               resumable: Sequence[str] = (),
               normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               is_main: bool = True):
    self.path = pathlib.Path(workdir).expanduser().resolve()  # orbax needs absolute paths
    self.config = _canonical(config)
    self.resumable = tuple(resumable)
    self.normalize = normalize
    self.is_main = is_main
    self.metrics = MetricsLog(self.path / "metrics.jsonl")
    self._lock_fd: int | None = None
    self._created = False

  @property
  def config_path(self) -> pathlib.Path:
    return self.path / "config.json"

  def check_config(self) -> bool:
    """Checks the saved config (if any) against this run's; writes nothing.

    Returns:
      Whether a saved config exists (the run resumes).

    Raises:
      ConfigMismatch: the saved config differs in a field not in ``resumable``,
        or cannot be read.
    """
    if not self.config_path.exists():
      return False
    try:
      saved = json.loads(self.config_path.read_text())
      if not isinstance(saved, dict):
        raise ValueError("not a JSON object")
      if self.normalize is not None:
        saved = _canonical(self.normalize(saved))
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigMismatch(f"{self.config_path} cannot be read as a config of this run "
                           f"({e}); use another workdir") from None
    diff = sorted(k for k in (set(saved) | set(self.config)) - set(self.resumable)
                  if saved.get(k) != self.config.get(k))
    if diff:
      detail = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}" for k in diff[:4])
      raise ConfigMismatch(f"{self.path} holds a run with a different config ({detail}"
                           f"{', ...' if len(diff) > 4 else ''}); use another workdir or the "
                           f"same settings to resume")
    return True

  def __enter__(self) -> "RunDir":
    """Creates the workdir, takes its lock and checks the config again (nothing written).

    A workdir this call created is removed again on a failed start (if still empty).
    """
    if self.is_main:
      self._created = not self.path.exists()
      self.path.mkdir(parents=True, exist_ok=True)
      self._lock_fd = _acquire_lock(self.path / LOCK_NAME)
      try:
        self.check_config()  # again, now that no one else can write it
      except BaseException:
        self.__exit__(*sys.exc_info())
        raise
    return self

  def start(self) -> None:
    """Writes ``config.json`` if the run is new (never rewritten on resume)."""
    if self.is_main and not self.config_path.exists():
      atomic_write_text(self.config_path, json.dumps(self.config, indent=1))

  def __exit__(self, exc_type, *exc) -> None:
    if self._lock_fd is None:
      return
    with contextlib.suppress(OSError):
      (self.path / LOCK_NAME).unlink()
    os.close(self._lock_fd)  # closing drops the fcntl lock
    self._lock_fd = None
    if exc_type is not None and self._created:
      with contextlib.suppress(OSError):
        self.path.rmdir()  # only if empty: a failed first start leaves nothing behind

  def checkpoint_manager(self, max_to_keep: int) -> ocp.CheckpointManager:
    """A synchronous orbax manager of ``<workdir>/checkpoints``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.path / "checkpoints", options=options)


def _acquire_lock(path: pathlib.Path) -> int:
  """Takes the ``fcntl`` lock on ``path`` and records pid and host in it.

  The kernel drops the lock when its holder dies, so a lock file left by a dead
  process (the recorded pid is gone) is simply taken over.
  """
  host = socket.gethostname()
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise WorkdirLocked(f"{path.parent} is in use by another run "
                          f"({_describe_holder(path)}); wait for it to finish or use another "
                          f"workdir") from None
    try:
      same = os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if not same:  # the holder removed the file between our open and lock: retry
      os.close(fd)
      continue
    old = _read_holder(fd)
    if old and old.get("host") not in (None, host):
      os.close(fd)
      raise WorkdirLocked(f"{path.parent} is locked by pid {old.get('pid')} on host "
                          f"{old.get('host')!r}; if that run is gone, delete {path}")
    # free, or left behind by a dead process of this host: ours now
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host,
                              "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
    return fd


def _read_holder(fd: int) -> dict[str, Any] | None:
  try:
    data = json.loads(os.pread(fd, 4096, 0) or b"null")
  except ValueError:
    return None
  return data if isinstance(data, dict) else None


def _describe_holder(path: pathlib.Path) -> str:
  try:
    holder = json.loads(path.read_text())
    return f"pid {holder['pid']} on host {holder['host']!r}, lock file {path}"
  except (OSError, ValueError, KeyError, TypeError):
    return f"lock file {path}"


class MetricsLog:
  """``metrics.jsonl``: one JSON object with a ``"step"`` per line."""

  def __init__(self, path: pathlib.Path):
    self.path = path

  def rows(self) -> list[dict[str, Any]]:
    """The rows; a cut-off or unreadable line (a kill mid-write) is left out."""
    if not self.path.exists():
      return []
    rows = []
    for line in self.path.read_text().splitlines():
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and "step" in row:
        rows.append(row)
    return rows

  def truncate(self, step: int) -> None:
    """Keeps the complete rows with ``row["step"] <= step``; rewrites atomically."""
    if not self.path.exists():
      return
    text = self.path.read_text()
    keep = "".join(json.dumps(r) + "\n" for r in self.rows() if r["step"] <= step)
    if keep != text:
      atomic_write_text(self.path, keep)

  def append(self, row: Mapping[str, Any]) -> None:
    """Appends one row (and flushes it)."""
    with self.path.open("a") as f:
      f.write(json.dumps(dict(row)) + "\n")


def restore_newest(mgr: ocp.CheckpointManager, target: Any, workdir: pathlib.Path, *,
                   log: Callable[[str], None] = print, is_main: bool = True
                   ) -> tuple[int, Any] | None:
  """Restores the newest checkpoint of ``mgr`` that restores.

  A newer checkpoint that fails to restore (truncated or missing files) is
  skipped: one line names its step and the error, and its folder is moved to
  ``<workdir>/damaged_checkpoints/<step>`` for inspection (so the step can be
  written again). When no checkpoint restores, nothing is moved.

  Args:
    mgr: the run's checkpoint manager.
    target: the state to restore into (``ocp.args.StandardRestore`` target:
      concrete arrays or ``jax.ShapeDtypeStruct`` with shardings).
    workdir: the run's directory.
    log: where the skipped-checkpoint lines go.
    is_main: this process moves the damaged folders.

  Returns:
    ``(step, state)``, or None when there is no checkpoint.

  Raises:
    RunError: checkpoints exist but none restores.
  """
  failed: list[tuple[int, Exception]] = []
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      state = mgr.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # noqa: BLE001 -- any failure means this checkpoint is unusable
      failed.append((step, e))
      continue
    for bad, err in failed:
      dest = _move_aside(mgr.directory / str(bad), workdir / DAMAGED_DIR, is_main)
      log(f"skipping checkpoint {bad}, which does not restore ({_one_line(err)}); "
          f"moved to {dest}; resuming from checkpoint {step}")
    if failed:
      mgr.reload()
    return step, state
  if failed:
    step, err = failed[0]
    raise RunError(f"no checkpoint in {mgr.directory} restores; the newest, {step}: "
                   f"{_one_line(err)}") from err
  return None


def _one_line(err: Exception) -> str:
  text = " ".join(str(err).split()) or "no message"
  return f"{type(err).__name__}: {text[:300]}"


def _move_aside(src: pathlib.Path, dest_dir: pathlib.Path, is_main: bool) -> pathlib.Path:
  dest, n = dest_dir / src.name, 1
  while dest.exists():
    dest, n = dest_dir / f"{src.name}.{n}", n + 1
  if is_main:
    dest_dir.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
  return dest


def replace_dir(dest: str | os.PathLike, write: Callable[[pathlib.Path], T], *,
                is_main: bool = True, barrier: Callable[[], None] | None = None) -> T:
  """Writes a directory with ``write(tmp)`` and swaps it into ``dest``.

  Readers see the old directory or the new one, never a half-written one: the
  new one is written next to ``dest``, then ``dest`` is renamed aside, the new
  one renamed into place and the old one removed.

  Args:
    dest: the directory to replace (or create).
    write: writes the new directory's contents into the path it is given.
    is_main: this process cleans up and renames (the others only ``write``).
    barrier: a cross-process barrier (multi-process runs), called before and
      after ``write``.

  Returns:
    What ``write`` returned.
  """
  dest = pathlib.Path(dest).resolve()
  tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
  if is_main:
    if old.exists() and not dest.exists():  # a swap was cut off: put the old one back
      os.replace(old, dest)
    for p in (tmp, old):
      if p.exists():
        shutil.rmtree(p)
  if barrier is not None:
    barrier()
  result = write(tmp)
  if barrier is not None:
    barrier()
  if is_main:
    if dest.exists():
      os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
  return result


class Eta:
  """Steps per second and time left, measured from construction.

  Example::

    eta = Eta(total=1000, start=step)
    ...
    print(f"step {s} {eta(s)}")   # "12.3 steps/s  ETA 1.2 min"
  """

  def __init__(self, total: int, start: int):
    self.total, self.start, self.t0 = total, start, time.monotonic()

  def rate(self, step: int) -> float:
    """Steps per second since construction."""
    return (step - self.start) / max(time.monotonic() - self.t0, 1e-9)

  def __call__(self, step: int) -> str:
    rate = self.rate(step)
    left = (self.total - step) / rate if rate > 0 else float("inf")
    return f"{rate:.3g} steps/s  ETA {left / 60:.1f} min"
