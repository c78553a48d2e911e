"""The G.pt evaluation protocol's settings file: fixed on validation runs, dated, checked.

Every setting of a test evaluation (the optimizer's prompt, temperature and
guidance; Adam's grid and ceiling; the init schemes, the number of inits and the
seed ranges) lives in one JSON file, written with its UTC date and time by the
validation step before any test figure is computed. The test step reads it,
refuses to run without it, refuses flags that differ from it and refuses weights
other than those it was chosen for; its report quotes the file and its date.

File layout (``format`` ``lopt-gpt-protocol/1``)::

  {"format", "created_utc", "rule", "settings": {ProtocolSettings fields},
   "ids": {"validation": [first, stop], "test": [first, stop]}, "selection": {...}}
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
from typing import Any, ClassVar

import numpy as np
from absl import flags

from meta_train._run import atomic_write_text
from meta_train.gpt._inits import INIT_SCHEMES, SPLITS, check_scheme, init_ids

__all__ = ["ADAM_GRID", "FORMAT", "ProtocolSettings", "check_matches", "check_new", "read_settings",
           "define_split_flag", "refuse_split_flag", "report_split", "split_out", "split_record",
           "split_title", "weights_digest", "write_settings"]

FORMAT = "lopt-gpt-protocol/1"
#: Adam's learning rates: 17, log-spaced from 1e-3 to 0.3 (about 6.5 per decade).
ADAM_GRID = tuple(float(f"{v:.3g}") for v in np.geomspace(1e-3, 0.3, 17))
RULE = ("All settings were chosen on validation runs only (validation init ids, disjoint "
        "from the test ids and from every training run's id) and written here before any "
        "test figure was computed.")


class SettingsJSON:
  """What every protocol's settings dataclass shares: its init ids and its JSON form.

  Subclasses are frozen dataclasses with ``num_inits``, ``num_validation_inits`` and
  ``KIND`` (the name unknown fields are reported under).
  """
  KIND: ClassVar[str] = "protocol"

  def ids(self, split: str) -> np.ndarray:
    """The init ids of ``split`` ("validation" or "test")."""
    n = self.num_validation_inits if split == "validation" else self.num_inits
    return init_ids(split, n)

  def to_json(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_json(cls, d: dict[str, Any]):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown {cls.KIND} settings {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class ProtocolSettings(SettingsJSON):
  """Every setting of a protocol test evaluation (one owner: this file).

  Attributes:
    weights: the G.pt weights directory; ``weights_sha256`` its state's digest.
    dataset: the model's training data (comma-separated directories).
    init_scale_range: the training data's init-scale range (``train`` scheme).
    temperature, guidance, target: the optimizer's sampling settings and prompt,
      chosen on validation inits.
    num_sampling_steps, eta: the sampler (DDIM at ``eta=0``).
    schemes: init schemes (:mod:`meta_train.gpt._inits`).
    num_inits: test inits per scheme; ``num_validation_inits`` validation inits.
    repeats: repeated updates reported (1 .. repeats).
    adam_lrs: Adam's grid; ``adam_ceiling`` the steps run (loss after every step);
      ``adam_at`` the step Adam's median is compared at.
    num_align_nets, num_prompts: prompt alignment: starting networks (the first
      test inits of ``train``) and prompts per network; ``low_prompt_max`` bounds
      the low prompts.
    ensemble_sizes, noise_fractions, num_good: Zeng et al.'s baselines
      (:mod:`meta_train.gpt._zeng`); ``num_candidates`` the alignment candidates;
      ``novelty_schemes`` the schemes whose novelty is measured (a subset of
      ``schemes``: each costs two searches of the whole training bank).
    seed: the sampling seed.
  """
  weights: str
  weights_sha256: str
  dataset: str
  init_scale_range: tuple[float, float]
  temperature: float
  guidance: float
  target: float
  num_sampling_steps: int = 20
  eta: float = 0.0
  schemes: tuple[str, ...] = INIT_SCHEMES
  num_inits: int = 64
  num_validation_inits: int = 64
  repeats: int = 3
  adam_lrs: tuple[float, ...] = ADAM_GRID
  adam_ceiling: int = 200
  adam_at: int = 100
  num_align_nets: int = 16
  num_prompts: int = 20
  low_prompt_max: float = 0.5
  ensemble_sizes: tuple[int, ...] = (2, 5, 10)
  noise_fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
  num_good: int = 64
  num_candidates: int = 32
  novelty_schemes: tuple[str, ...] = ("train", "scale:2")
  seed: int = 0

  def __post_init__(self):
    for name in self.schemes:
      check_scheme(name)
    if len(self.adam_lrs) < 15 or min(self.adam_lrs) <= 0:
      raise ValueError(f"adam_lrs must hold >= 15 positive rates, got {len(self.adam_lrs)}")
    if not 1 <= self.adam_at < self.adam_ceiling:
      raise ValueError(f"adam_at must be in [1, adam_ceiling), got {self.adam_at} and "
                       f"adam_ceiling {self.adam_ceiling}")
    for name in ("num_inits", "num_validation_inits", "repeats", "num_align_nets",
                 "num_sampling_steps", "num_good", "num_candidates"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not set(self.novelty_schemes) <= set(self.schemes):
      raise ValueError(f"novelty_schemes {list(self.novelty_schemes)} must be among schemes "
                       f"{list(self.schemes)}")
    if self.num_prompts < 2 or self.num_align_nets > self.num_inits:
      raise ValueError("num_prompts must be >= 2 and num_align_nets <= num_inits")


def weights_digest(weights: str | pathlib.Path) -> str:
  """SHA-256 over the files of ``weights/state`` (names and bytes), the network's identity."""
  root = pathlib.Path(weights) / "state"
  if not root.is_dir():
    raise FileNotFoundError(f"no G.pt weights state at {str(root)!r}")
  h = hashlib.sha256()
  for f in sorted(p for p in root.rglob("*") if p.is_file()):
    h.update(str(f.relative_to(root)).encode())
    h.update(f.read_bytes())
  return h.hexdigest()


def write_settings(path: str | pathlib.Path, settings: Any,
                   selection: dict[str, Any]) -> dict[str, Any]:
  """Writes the settings file with the current UTC time; never overwrites one.

  ``settings`` is a :class:`ProtocolSettings` or another protocol's settings class
  (``to_json``, ``ids``; its ``FORMAT`` names the file's format).

  Raises:
    FileExistsError: ``path`` exists (settings are fixed once; delete the file by
      hand to choose again, and say so in the report).
  """
  path = pathlib.Path(path)
  check_new(path)
  ids = {s: [int(settings.ids(s)[0]), int(settings.ids(s)[-1]) + 1]
         for s in ("validation", "test")}
  doc = {"format": getattr(settings, "FORMAT", FORMAT),
         "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
             timespec="seconds"),
         "rule": RULE, "settings": settings.to_json(), "ids": ids, "selection": selection}
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(path, json.dumps(doc, indent=1))
  return doc


def check_new(path: str | pathlib.Path) -> None:
  """Raises ``FileExistsError`` if a settings file exists at ``path`` (written once)."""
  if pathlib.Path(path).exists():
    raise FileExistsError(f"{path} exists: protocol settings are written once, before any "
                          f"test figure; delete it by hand to choose them again")


def read_settings(path: str | pathlib.Path | None, cls: type = ProtocolSettings,
                  command: str = "meta_train.gpt.protocol") -> tuple[Any, dict[str, Any]]:
  """Reads a settings file of ``cls``; returns the settings and the whole document.

  Raises:
    FileNotFoundError: no file (test figures need settings fixed on validation first).
    ValueError: another format, or ids that do not match the settings.
  """
  if path is None or not pathlib.Path(path).is_file():
    raise FileNotFoundError(
        f"no protocol settings file at {str(path)!r}: test figures are computed only with "
        f"settings fixed on validation runs; write them first with `python -m "
        f"{command} --validation_only --settings=<file>`")
  doc = json.loads(pathlib.Path(path).read_text())
  fmt = getattr(cls, "FORMAT", FORMAT)
  if doc.get("format") != fmt or "created_utc" not in doc:
    raise ValueError(f"{path}: not a {fmt} settings file with a creation date (format "
                     f"{doc.get('format')!r})")
  settings = cls.from_json(doc["settings"])
  for split in ("validation", "test"):
    ids = settings.ids(split)
    if doc["ids"][split] != [int(ids[0]), int(ids[-1]) + 1]:
      raise ValueError(f"{path}: the {split} ids {doc['ids'][split]} do not match the settings")
  return settings, doc


def check_matches(settings: ProtocolSettings, **given: Any) -> None:
  """Raises ``ValueError`` naming every given setting that differs from the file's."""
  file_json = settings.to_json()
  unknown = sorted(set(given) - set(file_json))
  if unknown:
    raise ValueError(f"unknown protocol settings {unknown}")
  diff = [f"{k}: given {v!r}, file {file_json[k]!r}" for k, v in given.items()
          if json.loads(json.dumps(v)) != file_json[k]]
  if diff:
    raise ValueError("settings differ from the settings file (choose them on validation with "
                     "--validation_only, or drop the flags): " + "; ".join(diff))


def report_split(path: pathlib.Path) -> str | None:
  """The split of the report at ``path`` (older reports: test); None if there is none."""
  try:
    return json.loads(path.read_text()).get("split", "test")
  except (OSError, ValueError, AttributeError):
    return None


def split_out(out: str | pathlib.Path, split: str) -> pathlib.Path:
  """``out`` as a path, once ``split`` is known and ``out`` holds no report of another split.

  Raises:
    ValueError: an unknown split, or a report of the other split in ``out``.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
  outp = pathlib.Path(out)
  if report_split(outp / "report.json") not in (None, split):
    raise ValueError(f"{outp / 'report.json'} is a report of another split; write the {split} "
                     f"report elsewhere")
  return outp


def split_title(split: str) -> str:
  """What a report's title adds for ``split``: nothing for test figures."""
  return "" if split == "test" else (f" on {split.upper()} inits (for model selection; not a "
                                     f"test figure)")


def split_record(settings: SettingsJSON, split: str) -> dict[str, Any]:
  """What a report records of its split: the name and the id range ``[first, stop)``."""
  ids = settings.ids(split)
  return {"split": split, "ids": [int(ids[0]), int(ids[-1]) + 1]}


def define_split_flag(fv: flags.FlagValues) -> None:
  """The test step's ``--split`` flag (both protocols' command lines)."""
  flags.DEFINE_enum("split", "test", list(SPLITS), "Test step: the init ids of every figure; "
                    "'validation' (the ids the settings were chosen on) compares model "
                    "versions without test inits.", flag_values=fv)


def refuse_split_flag(fv: flags.FlagValues) -> None:
  """``ValueError`` when ``--split`` is given to the validation step."""
  if fv["split"].present:
    raise ValueError("--split is a test-step flag (--validation_only uses validation ids)")
