r"""The G.pt evaluation protocol: settings fixed on validation, then test figures.

Two steps, each one command::

  # 1. choose every setting on validation inits; write them, dated, to a file
  python -m meta_train.gpt.protocol --validation_only \
      --weights=lopt/weights/gpt_digits_mlp --settings=docs/results/gpt/protocol_settings.json
  # 2. the test figures, with exactly those settings (the report quotes the file's date)
  python -m meta_train.gpt.protocol --settings=docs/results/gpt/protocol_settings.json \
      --out=runs/gpt_protocol

Step 2 refuses to run without the file, with weights other than those it names, or
with a flag that differs from it. Validation and test inits come from disjoint id
ranges that no training run uses (:mod:`meta_train.gpt._inits`).

**Validation step** (validation ids, ``train`` scheme only): the temperature and
target (prompt) whose one update reaches the best median metric over
``--temperatures`` x the grid ``best + f (ref - best)`` (``f`` in
``--target_fractions``, ``ref`` the median final metric of the training runs); then
the guidance scale of ``--guidances`` with the best pooled plus low-prompt alignment
R^2 on the first ``--num_align_nets`` validation inits, among the scales whose one
update is no worse than without guidance.

**Test step**, per init scheme (:data:`~meta_train.gpt._inits.INIT_SCHEMES`) on
``--num_inits`` test inits: G.pt's median metric after 1 .. ``--repeats`` updates
(and the median test error after one) against Adam's median curves on
``--adam_lrs`` measured after every step up to ``--adam_ceiling``
(:func:`~meta_train.gpt._measures.median_summary`); permutation-aligned novelty of
G.pt's one-update networks and of Adam's networks after ``--adam_at`` steps (best
rate) from the same inits (:mod:`meta_train.gpt._align`). Once: prompt-alignment
R^2 (pooled, per net, prompts <= ``--low_prompt_max``, log space), Zeng et al.'s
baselines at their strongest (:mod:`meta_train.gpt._zeng`), and the FLOPs of one
update against one Adam step. Writes ``report.json`` and ``report.md``.

**Comparing model versions**: ``--split=validation`` computes every figure above on
the ``--num_validation_inits`` validation ids the settings were chosen on (no test id
is drawn; the report says ``"split": "validation"``). Choose versions on these reports.

Reference: Peebles et al. 2022, arXiv 2209.12892; Zeng et al. 2025.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import app, flags

from meta_train.gpt._context import ProtocolContext
from meta_train.gpt._inits import check_disjoint, check_scheme
from meta_train.gpt._measures import alignment_r2
from meta_train.gpt._protocol import (
  ProtocolSettings,
  check_matches,
  check_new,
  define_split_flag,
  read_settings,
  refuse_split_flag,
  split_out,
  split_record,
  split_title,
  weights_digest,
  write_settings,
)
from meta_train.gpt._protocol_test import run_test

__all__ = ["choose_settings", "define_flags", "evaluate_protocol", "run"]


def choose_settings(weights: str, settings_path: str, dataset: str | None = None, *,
                    temperatures: Sequence[float] = (0.0, 0.3, 0.7),
                    target_fractions: Sequence[float] = (0.0, 0.025, 0.05, 0.1, 0.2, 0.35),
                    guidances: Sequence[float] = (0.0, 0.1, 0.3, 0.5),
                    temperature: float | None = None, target: float | None = None,
                    guidance: float | None = None, log: Callable[[str], None] = print,
                    context: ProtocolContext | None = None, **settings: Any) -> dict[str, Any]:
  """The validation step: chooses the optimizer's settings and writes the settings file.

  Uses validation inits only (module docstring). ``temperature``, ``target`` or
  ``guidance`` given fix that setting instead of choosing it; ``settings`` are the
  other :class:`~meta_train.gpt._protocol.ProtocolSettings` fields (defaults
  otherwise). ``context`` reuses a loaded model and dataset (it must be ``weights``').

  Example::

    doc = choose_settings("lopt/weights/gpt_digits_mlp", "runs/settings.json", num_inits=64)
    doc["created_utc"], doc["settings"]["target"]

  Returns:
    The written document (``settings``, ``created_utc``, ``selection``, ``ids``).
  """
  check_new(settings_path)  # before any work: the file is written once
  t0 = time.time()
  probe = ProtocolSettings(weights=str(weights), weights_sha256="", dataset="",
                           init_scale_range=(1.0, 1.0), temperature=0.0, guidance=0.0,
                           target=0.0, **settings)  # validates the fields early
  ctx = _context(context, str(weights), dataset, probe)
  if not ctx.lower_is_better:
    raise ValueError(f"{weights!r} is prompted on {ctx.metric!r} (higher is better); use "
                     f"`python -m meta_train.gpt.protocol_return` for it")
  ids = probe.ids("validation")
  check_disjoint(ctx.index, ids, probe.ids("test"))
  starts = ctx.inits("train", ids)
  m0 = ctx.measure(starts)[ctx.metric]
  key = jax.random.key(probe.seed + 1)  # not the test step's key

  def one_update(tmp, w, prompt):
    new = ctx.generate(jax.random.fold_in(key, 1), starts, m0, prompt, tmp, w)
    return float(np.median(ctx.measure(new)[ctx.metric]))

  temps = [float(t) for t in temperatures] if temperature is None else [float(temperature)]
  grid = ([float(target)] if target is not None else list(dict.fromkeys(
      ctx.best + float(f) * (ctx.reference_metric - ctx.best) for f in target_fractions)))
  scores = {(tp, tg): one_update(tp, 0.0, tg) for tp in temps for tg in grid}
  temperature, target = min(scores, key=scores.get)
  selection: dict[str, Any] = {
      "validation_scheme": "train", "reference_metric": ctx.reference_metric,
      "target_fractions": [float(f) for f in target_fractions],
      "one_update_median_by_temperature_and_target": {
          f"{tp:g}": {f"{tg:.6g}": scores[tp, tg] for tg in grid} for tp in temps}}
  table = selection["one_update_median_by_temperature_and_target"]
  log(f"protocol: validation one-update medians {table}; temperature {temperature:g}, "
      f"target {target:.6g} [{time.time() - t0:.0f}s]")
  nets = starts[:probe.num_align_nets]
  by_w = {}
  for w in ([float(guidance)] if guidance is not None else sorted({0.0, *map(float, guidances)})):
    r2 = alignment_r2(*ctx.alignment(jax.random.fold_in(key, 2), nets, probe.num_prompts,
                                     temperature, w), low_max=probe.low_prompt_max)
    by_w[w] = {"one_update_median": scores[temperature, target] if w == 0.0
               else one_update(temperature, w, target), "r2": r2}
  base = by_w.get(0.0, {}).get("one_update_median", np.inf)
  ok = [w for w in by_w if by_w[w]["one_update_median"] <= base] or list(by_w)
  guidance = max(ok, key=lambda w: by_w[w]["r2"]["pooled"] + (by_w[w]["r2"]["low"] or -1e9))
  selection["by_guidance"] = {f"{w:g}": v for w, v in by_w.items()}
  selection["chosen"] = {"temperature": temperature, "target": target, "guidance": guidance}
  selection["seconds"] = time.time() - t0
  log(f"protocol: validation by guidance {selection['by_guidance']}; guidance {guidance:g}")
  final = dataclasses.replace(probe, weights_sha256=weights_digest(weights),
                              dataset=ctx.dataset, init_scale_range=ctx.init_scale_range,
                              temperature=temperature, guidance=guidance, target=target)
  doc = write_settings(settings_path, final, selection)
  log(f"protocol: wrote {settings_path} ({doc['created_utc']})")
  return doc


def evaluate_protocol(settings_path: str, out: str, *, split: str = "test",
                      log: Callable[[str], None] = print,
                      context: ProtocolContext | None = None, **given: Any) -> dict[str, Any]:
  """The test step: every test figure, with the settings of ``settings_path``.

  ``split="validation"`` computes the same figures on the validation ids instead (for
  choosing between model versions; the report says so). ``given`` settings (e.g. from
  flags) must equal the file's. ``context`` reuses a loaded model and dataset (they
  must be the file's).

  Example::

    rep = evaluate_protocol("docs/results/gpt/protocol_settings.json", "runs/gpt_protocol")
    rep["schemes"]["train"]["adam"]["median_at"], rep["settings_created_utc"]

  Raises:
    FileNotFoundError: no settings file.
    ValueError: settings that differ from the file's, other weights, overlapping ids,
      an unknown split, or ``out`` holding a report of the other split.
  """
  outp = split_out(out, split)
  settings, doc = read_settings(settings_path)
  check_matches(settings, **given)
  digest = weights_digest(settings.weights)
  if digest != settings.weights_sha256:
    raise ValueError(f"the weights at {settings.weights!r} are not those the settings file "
                     f"was chosen for (sha256 {digest[:12]} != {settings.weights_sha256[:12]})")
  started = datetime.datetime.now(datetime.timezone.utc)
  if datetime.datetime.fromisoformat(doc["created_utc"]) > started:
    raise ValueError(f"{settings_path} is dated after now ({doc['created_utc']})")
  ctx = _context(context, settings.weights, settings.dataset, settings)
  check_disjoint(ctx.index, settings.ids("validation"), settings.ids("test"))
  rep = {**split_record(settings, split),
         "settings_file": str(settings_path), "settings_created_utc": doc["created_utc"],
         "test_started_utc": started.isoformat(timespec="seconds"), "rule": doc["rule"],
         "settings": settings.to_json(), **ctx.describe()}
  rep.update(run_test(ctx, settings, split=split, log=log))
  outp.mkdir(parents=True, exist_ok=True)
  (outp / "report.json").write_text(json.dumps(rep, indent=1))
  (outp / "report.md").write_text(_markdown(rep))
  log(f"protocol: wrote {outp / 'report.json'} and report.md")
  return rep


def _context(ctx: ProtocolContext | None, weights: str, dataset: str | None,
             s: ProtocolSettings) -> ProtocolContext:
  if ctx is None:
    return ProtocolContext(weights, dataset, num_sampling_steps=s.num_sampling_steps, eta=s.eta)
  if (ctx.weights, ctx.num_sampling_steps, ctx.eta) != (weights, s.num_sampling_steps, s.eta) \
      or (dataset is not None and ctx.dataset != dataset):
    raise ValueError("the given context holds other weights, data or sampler settings")
  return ctx


def _markdown(rep: dict[str, Any]) -> str:
  s, split = rep["settings"], rep.get("split", "test")
  n = s["num_inits"] if split == "test" else s["num_validation_inits"]
  lines = [f"# G.pt protocol report: {s['weights']}{split_title(split)}", "",
           f"Settings file `{rep['settings_file']}`, written {rep['settings_created_utc']} "
           f"(UTC); {split} figures computed from {rep['test_started_utc']}. {rep['rule']}", "",
           f"Prompt {s['target']:.4g}, temperature {s['temperature']:g}, guidance "
           f"{s['guidance']:g}, {s['num_sampling_steps']} sampling steps; {n} {split} "
           f"inits per scheme; Adam on {len(s['adam_lrs'])} rates, metric after every step up "
           f"to {s['adam_ceiling']}.", "",
           f"| scheme | init | G.pt 1 update | after 1..{s['repeats']} updates | "
           f"Adam median @{s['adam_at']} (lr) | Adam steps to match | novelty ratio |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in rep["schemes"].items():
    a, nov = r["adam"], r.get("novelty", {})
    lines.append(
        f"| {name} | {r['init_median']:.3f} | **{r['gpt_median'][1]:.4f}** | "
        f"{' / '.join(f'{v:.4f}' for v in r['gpt_median'][1:])} | {a['median_at']:.4f} "
        f"({a['best_lr_at']:g}{', grid edge' if a['best_lr_on_grid_edge'] else ''}) | "
        f"{a['steps_to_match']} | "
        f"{'%.2f' % nov['nearest_ratio'] if nov else 'not measured'} |")
  r2, fl = rep["prompt_alignment"]["r2"], rep["compute"]
  lines += ["", f"Prompt alignment R^2: pooled {r2['pooled']:.3f}, per net "
            f"{r2['per_net_mean']:.3f}, prompts <= {r2['low_max']:g}: {r2['low']}, log space "
            f"{r2['log']}.", "",
            f"Compute: one update {fl['gpt']['per_update']:.3g} FLOPs = "
            f"{fl['adam_steps_per_update']:.0f} Adam steps ({fl['adam']['per_step']:.3g} each).",
            ""]
  for name, r in rep["schemes"].items():
    if "novelty" in r:
      n = r["novelty"]
      lines.append(f"Novelty ({name}, aligned L2): nearest training checkpoint G.pt "
                   f"{n['gpt_nearest_median']:.2f} vs Adam {n['adam_nearest_median']:.2f} (raw "
                   f"L2 G.pt {n['gpt_nearest_raw_median']:.2f}); pairwise G.pt "
                   f"{n['gpt_pairwise_median']:.2f} vs Adam {n['adam_pairwise_median']:.2f}; "
                   f"moved from init G.pt {n['gpt_moved_median']:.2f} vs Adam "
                   f"{n['adam_moved_median']:.2f}.")
  z = rep["baselines"]
  ens = ", ".join(f"k={k} {v['metric']:.4f} (unaligned {v['unaligned_metric']:.3f})"
                  for k, v in z["ensembles"].items())
  noise = ", ".join(f"{f}: {v['metric']:.4f} at {v['distance']:.2f}"
                    for f, v in z["noise"].items())
  lines += ["", f"Baselines: retrieval of the best checkpoint {z['retrieval_best']['metric']:.4f}, "
            f"of the one nearest the target {z['retrieval_target']['metric']:.4f}; aligned "
            f"ensembles {ens}; best checkpoint + noise at fractions of the good checkpoints' "
            f"spread (median loss at median aligned distance) {noise}; "
            f"G.pt (train) {z.get('gpt_train_scheme')}.", "",
            "Targets: " + ", ".join(f"{k}: {v}" for k, v in rep["targets"].items()), ""]
  return "\n".join(lines)


#: Flags that are ProtocolSettings fields (the test step compares the ones given).
_SETTING_FLAGS = ("weights", "dataset", "num_inits", "num_validation_inits", "schemes",
                  "novelty_schemes", "repeats", "adam_lrs", "adam_ceiling", "adam_at",
                  "num_align_nets", "num_prompts", "low_prompt_max", "num_sampling_steps", "eta",
                  "seed")
_VALIDATION_FLAGS = ("temperatures", "target_fractions", "guidances", "temperature", "target",
                     "guidance")


def _flag_value(fv: flags.FlagValues, name: str) -> Any:
  v = fv[name].value
  if name == "adam_lrs":
    return tuple(float(x) for x in v)
  return tuple(v) if isinstance(v, list) else v


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  present = {n for n in _SETTING_FLAGS + _VALIDATION_FLAGS if fv[n].present}
  try:
    if fv.validation_only:
      refuse_split_flag(fv)
      kw = {n: _flag_value(fv, n) for n in _SETTING_FLAGS if n not in ("weights", "dataset")
            and n in present}
      floats = lambda xs: [float(x) for x in xs]  # noqa: E731
      choose_settings(fv.weights, fv.settings, fv.dataset,
                      temperatures=floats(fv.temperatures),
                      target_fractions=floats(fv.target_fractions),
                      guidances=floats(fv.guidances), temperature=fv.temperature,
                      target=fv.target, guidance=fv.guidance, **kw)
    else:
      extra = sorted(present & set(_VALIDATION_FLAGS))
      if extra:
        raise ValueError(f"--{extra[0]} is a validation setting: pass it with --validation_only")
      evaluate_protocol(fv.settings, fv.out, split=fv.split,
                        **{n: _flag_value(fv, n) for n in _SETTING_FLAGS if n in present})
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"gpt.protocol: {e}")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command line's flags in ``fv``, with their validators."""
  d = {f.name: f.default for f in dataclasses.fields(ProtocolSettings)}
  flags.DEFINE_string("settings", None, "The protocol settings file (JSON): written by "
                      "--validation_only, read by the test step.", required=True, flag_values=fv)
  flags.DEFINE_bool("validation_only", False, "Choose the settings on validation inits and "
                    "write the settings file; compute no test figure.", flag_values=fv)
  flags.DEFINE_string("out", "runs/gpt_protocol", "Test step: output directory.", flag_values=fv)
  define_split_flag(fv)
  flags.DEFINE_string("weights", "lopt/weights/gpt_digits_mlp", "G.pt weights directory.",
                      flag_values=fv)
  flags.DEFINE_string("dataset", None, "The model's training data (comma-separated); default: "
                      "its manifest's extra.dataset.", flag_values=fv)
  for name, lo in (("num_inits", 1), ("num_validation_inits", 1), ("repeats", 1),
                   ("adam_ceiling", 2), ("adam_at", 1), ("num_align_nets", 1),
                   ("num_prompts", 2), ("num_sampling_steps", 1)):
    flags.DEFINE_integer(name, d[name], f"ProtocolSettings.{name}.", lower_bound=lo,
                         flag_values=fv)
  flags.DEFINE_integer("seed", d["seed"], "Sampling seed.", flag_values=fv)
  flags.DEFINE_float("eta", d["eta"], "0 = DDIM, 1 = DDPM.", lower_bound=0.0, upper_bound=1.0,
                     flag_values=fv)
  flags.DEFINE_float("low_prompt_max", d["low_prompt_max"], "Bound of the low prompts.",
                     flag_values=fv)
  flags.DEFINE_list("schemes", list(d["schemes"]), "Init schemes.", flag_values=fv)
  flags.DEFINE_list("novelty_schemes", list(d["novelty_schemes"]), "Schemes whose novelty is "
                    "measured (among --schemes).", flag_values=fv)
  flags.DEFINE_list("adam_lrs", [f"{v:g}" for v in d["adam_lrs"]], "Adam's learning rates "
                    "(>= 15).", flag_values=fv)
  flags.DEFINE_list("temperatures", ["0", "0.3", "0.7"], "Validation: temperatures tried.",
                    flag_values=fv)
  flags.DEFINE_list("target_fractions", ["0", "0.025", "0.05", "0.1", "0.2", "0.35"],
                    "Validation: target grid best + f (ref - best).", flag_values=fv)
  flags.DEFINE_list("guidances", ["0", "0.1", "0.3", "0.5"], "Validation: guidance scales "
                    "tried.", flag_values=fv)
  flags.DEFINE_float("temperature", None, "Validation: fix the temperature.", lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_float("target", None, "Validation: fix the target (prompt).", flag_values=fv)
  flags.DEFINE_float("guidance", None, "Validation: fix the guidance scale.", lower_bound=0.0,
                     flag_values=fv)

  def schemes_ok(v):
    try:
      for s in v:
        check_scheme(s)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return bool(v) or _fail("--schemes must name at least one scheme")

  def floats_ok(name, at_least):
    def ok(v):
      try:
        xs = [float(x) for x in v]
      except ValueError:
        return _fail(f"--{name} must be numbers, got {v}")
      if len(xs) < at_least or min(xs, default=0.0) < 0 or (name == "adam_lrs" and min(xs) <= 0):
        return _fail(f"--{name} needs >= {at_least} values, each "
                     f"{'> 0' if name == 'adam_lrs' else '>= 0'}")
      return True
    return ok

  flags.register_validator("schemes", schemes_ok, flag_values=fv)
  flags.register_multi_flags_validator(
      ["schemes", "novelty_schemes"], lambda f: set(f["novelty_schemes"]) <= set(f["schemes"]),
      "--novelty_schemes must be among --schemes", flag_values=fv)
  for name, n in (("adam_lrs", 15), ("temperatures", 1), ("target_fractions", 1),
                  ("guidances", 1)):
    flags.register_validator(name, floats_ok(name, n), flag_values=fv)
  flags.register_multi_flags_validator(
      ["adam_at", "adam_ceiling"], lambda f: f["adam_at"] < f["adam_ceiling"],
      "--adam_at must be below --adam_ceiling", flag_values=fv)
  flags.register_multi_flags_validator(
      ["num_align_nets", "num_inits"], lambda f: f["num_align_nets"] <= f["num_inits"],
      "--num_align_nets must be at most --num_inits", flag_values=fv)


def _fail(msg: str) -> bool:
  raise flags.ValidationError(msg)


def run() -> None:
  """The command line: ``python -m meta_train.gpt.protocol``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
