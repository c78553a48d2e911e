r"""The G.pt protocol for a return-prompted model (e.g. CartPole): validation, then test.

Two steps, each one command::

  # 1. choose temperature, target and guidance on validation inits; write them, dated
  python -m meta_train.gpt.protocol_return --validation_only \
      --weights=lopt/weights/gpt_cartpole \
      --settings=docs/results/gpt/cartpole_protocol_settings.json
  # 2. the test figures, with exactly those settings
  python -m meta_train.gpt.protocol_return \
      --settings=docs/results/gpt/cartpole_protocol_settings.json \
      --out=docs/results/gpt/cartpole_protocol

The rule, the settings file checks (date, weights SHA-256, flags equal to the file's,
written once), the disjoint init ids and ``--split=validation`` (every figure on the
validation ids, to choose between model versions) are those of
:mod:`meta_train.gpt.protocol`; the measurements are in
:mod:`meta_train.gpt._protocol_return`.

**Validation step** (validation ids): the temperature and target whose one update
reaches the highest median return over ``--temperatures`` x the targets ``best + f (ref
- best)`` (``f`` in ``--target_fractions``, ``best`` the best return in the training
data, ``ref`` the training runs' median initial return); then the guidance scale of
``--guidances`` with the best pooled plus high-range alignment R^2 on the first
``--num_align_nets`` validation inits, among those whose one update is no worse.

**Test step** (test ids, fresh random policies drawn like the training data): G.pt's
median return after 1 .. ``repeats`` updates; tuned Adam (REINFORCE) on ``adam_lrs``
for ``adam_at`` steps, every step counted: its median at ``adam_at`` and the steps its
best median curve needs to reach G.pt's one-update median and the success return;
prompt-alignment R^2 (pooled, per net, high range); the spread of samples at each of
``spread_temperatures`` from one start (permutation-aligned), next to Adam's spread over
batch seeds from the same starts; FLOPs of one update against one Adam step.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import app, flags

from meta_train.gpt._context import ProtocolContext
from meta_train.gpt._inits import check_disjoint
from meta_train.gpt._measures import adam_step_flops, compute_ratio, gpt_update_flops
from meta_train.gpt._protocol import (
  check_matches,
  check_new,
  define_split_flag,
  read_settings,
  refuse_split_flag,
  split_out,
  split_record,
  split_title,
  weights_digest,
)
from meta_train.gpt._protocol import write_settings as _write
from meta_train.gpt._protocol_return import (
  ReturnProtocolSettings,
  adam_returns,
  adam_seed_spread,
  flat_key,
  return_alignment_r2,
  sample_spread,
  wall_clock,
)

__all__ = ["choose_return_settings", "define_flags", "evaluate_return_protocol",
           "record_in_manifest", "run"]

_COMMAND = "meta_train.gpt.protocol_return"
ADAM_KEY_SEED = 17  #: Base seed of Adam's batch keys: ``fold_in(key(17), init id)``.


def _context(weights: str, dataset: str | None, s: ReturnProtocolSettings) -> ProtocolContext:
  ctx = ProtocolContext(weights, dataset, num_sampling_steps=s.num_sampling_steps, eta=s.eta,
                        task_overrides={"eval_batch_size": s.eval_episodes})
  if ctx.lower_is_better:
    raise ValueError(f"{weights!r} is prompted on {ctx.metric!r}, a lower-is-better metric; "
                     f"use `python -m meta_train.gpt.protocol` for it")
  return ctx


def record_in_manifest(settings_path: str, log: Callable[[str], None] = print) -> None:
  """Makes a settings file's temperature, guidance and target the optimizer's defaults.

  Writes them to ``extra`` of the weights' ``manifest.json``; the digest covers ``state/``.
  """
  s, doc = read_settings(settings_path, ReturnProtocolSettings, _COMMAND)
  mpath = pathlib.Path(s.weights) / "manifest.json"
  man = json.loads(mpath.read_text())
  man["extra"].update(sampling_temperature=s.temperature, guidance=s.guidance, target=s.target,
                      settings_file=f"{settings_path} ({doc['created_utc']})")
  mpath.write_text(json.dumps(man, indent=1))
  log(f"protocol_return: recorded temperature {s.temperature:g}, guidance {s.guidance:g}, "
      f"target {s.target:g} in {mpath}")


def choose_return_settings(weights: str, settings_path: str, dataset: str | None = None, *,
                           temperatures: Sequence[float] = (0.0, 0.3, 0.7),
                           target_fractions: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
                           guidances: Sequence[float] = (0.0, 0.1, 0.3, 0.5),
                           save_settings: bool = False, log: Callable[[str], None] = print,
                           **settings: Any) -> dict[str, Any]:
  """The validation step: chooses temperature, target and guidance; writes the file.

  Example::

    doc = choose_return_settings("lopt/weights/gpt_cartpole", "runs/settings.json")
    doc["created_utc"], doc["settings"]["target"]

  Args:
    weights, settings_path, dataset: the model, the file to write (once), its data.
    temperatures, target_fractions, guidances: the validation grids (module docstring).
    save_settings: also make them the optimizer's defaults (:func:`record_in_manifest`).
    settings: other ``ReturnProtocolSettings`` fields.

  Raises:
    FileExistsError: the settings file exists.
    ValueError: a model prompted on a lower-is-better metric, overlapping ids.
  """
  check_new(settings_path)
  t0 = time.time()
  probe = ReturnProtocolSettings(weights=str(weights), weights_sha256="", dataset="",
                                 init_scale_range=(1.0, 1.0), temperature=0.0, guidance=0.0,
                                 target=0.0, **settings)
  ctx = _context(str(weights), dataset, probe)
  ids = probe.ids("validation")
  check_disjoint(ctx.index, ids, probe.ids("test"))
  starts = ctx.inits("train", ids)
  m0 = ctx.measure(starts)[ctx.metric]
  key = jax.random.key(probe.seed + 1)  # not the test step's key
  ref = float(np.median(ctx.bank_metric.reshape(-1, len(ctx.index["steps"]))[:, 0]))

  def one_update(tmp, w, prompt):
    new = ctx.generate(jax.random.fold_in(key, 1), starts, m0, prompt, tmp, w)
    return float(np.median(ctx.measure(new)[ctx.metric]))

  grid = list(dict.fromkeys(ctx.best + float(f) * (ref - ctx.best) for f in target_fractions))
  scores = {(tp, tg): one_update(float(tp), 0.0, tg) for tp in temperatures for tg in grid}
  temperature, target = max(scores, key=scores.get)
  table = {f"{tp:g}": {f"{tg:.6g}": scores[tp, tg] for tg in grid} for tp in temperatures}
  log(f"protocol_return: validation one-update medians {table}; temperature "
      f"{temperature:g}, target {target:.6g} [{time.time() - t0:.0f}s]")
  nets = starts[:probe.num_align_nets]
  by_w = {}
  for w in sorted({0.0, *map(float, guidances)}):
    prompts, achieved = ctx.alignment(jax.random.fold_in(key, 2), nets, probe.num_prompts,
                                      temperature, w)
    by_w[w] = {"one_update_median": scores[temperature, target] if w == 0.0
               else one_update(temperature, w, target),
               "r2": return_alignment_r2(prompts, achieved, high_min=probe.high_prompt_min)}
  ok = [w for w in by_w if by_w[w]["one_update_median"] >= by_w[0.0]["one_update_median"]]
  guidance = max(ok, key=lambda w: by_w[w]["r2"]["pooled"] + (by_w[w]["r2"]["high"] or -1e9))
  selection = {"validation_scheme": "train", "validation_inits": len(ids),
               "reference_metric": ref, "target_fractions": [float(f) for f in target_fractions],
               "validation_init_median": float(np.median(m0)),
               "one_update_median_by_temperature_and_target": table,
               "by_guidance": {f"{w:g}": v for w, v in by_w.items()},
               "chosen": {"temperature": temperature, "target": target, "guidance": guidance},
               "seconds": time.time() - t0}
  log(f"protocol_return: validation by guidance {selection['by_guidance']}; guidance "
      f"{guidance:g}")
  final = dataclasses.replace(probe, weights_sha256=weights_digest(weights),
                              dataset=ctx.dataset, init_scale_range=ctx.init_scale_range,
                              temperature=float(temperature), guidance=float(guidance),
                              target=float(target))
  doc = _write(settings_path, final, selection)
  log(f"protocol_return: wrote {settings_path} ({doc['created_utc']})")
  if save_settings:
    record_in_manifest(settings_path, log)
  return doc


def evaluate_return_protocol(settings_path: str, out: str, *, split: str = "test",
                             log: Callable[[str], None] = print, **given: Any) -> dict[str, Any]:
  """The test step: every test figure, with the settings of ``settings_path``.

  ``split="validation"`` computes the same figures on the validation ids instead (for
  choosing between model versions; no test id is drawn, and the report says so).

  Example::

    rep = evaluate_return_protocol("docs/results/gpt/cartpole_protocol_settings.json",
                                   "runs/gpt_cartpole_protocol")
    rep["gpt"]["median"][1], rep["adam"]["median_at"], rep["prompt_alignment"]["r2"]

  Raises:
    FileNotFoundError: no settings file.
    ValueError: settings that differ from the file's, other weights, overlapping ids,
      an unknown split, or ``out`` holding a report of the other split.
  """
  outp = split_out(out, split)
  s, doc = read_settings(settings_path, ReturnProtocolSettings, _COMMAND)
  check_matches(s, **given)
  if weights_digest(s.weights) != s.weights_sha256:
    raise ValueError(f"the weights at {s.weights!r} are not those the settings file was "
                     f"chosen for")
  started = datetime.datetime.now(datetime.timezone.utc)
  if datetime.datetime.fromisoformat(doc["created_utc"]) > started:
    raise ValueError(f"{settings_path} is dated after now ({doc['created_utc']})")
  t0 = time.time()
  ctx = _context(s.weights, s.dataset, s)
  ids = s.ids(split)
  check_disjoint(ctx.index, s.ids("validation"), s.ids("test"))
  key = jax.random.key(s.seed)
  starts = ctx.inits("train", ids)
  nets, mets = ctx.repeated(key, starts, s.repeats, s.target, s.temperature, s.guidance)
  rets = [m[ctx.metric] for m in mets]
  gpt = {"median": [float(np.median(r)) for r in rets], "mean": [float(np.mean(r)) for r in rets],
         "fraction_at_least_success": [float(np.mean(r >= s.success_return)) for r in rets],
         "one_update": rets[1].round(2).tolist(), "init": rets[0].round(2).tolist()}
  log(f"protocol_return: G.pt medians after 0..{s.repeats} updates {gpt['median']} "
      f"[{time.time() - t0:.0f}s]")
  adam = adam_returns(ctx, s, starts, flat_key(ADAM_KEY_SEED, ids), gpt["median"][1])
  adam_nets = adam.pop("nets")
  log(f"protocol_return: Adam median at {s.adam_at} {adam['median_at']:.1f} (lr "
      f"{adam['best_lr_at']:g}), steps to G.pt's median {adam['steps_to_match']}, to "
      f"{s.success_return:g} {adam['steps_to_success']} [{time.time() - t0:.0f}s]")
  prompts, achieved = ctx.alignment(jax.random.fold_in(key, 1000), starts[:s.num_align_nets],
                                    s.num_prompts, s.temperature, s.guidance)
  r2 = return_alignment_r2(prompts, achieved, high_min=s.high_prompt_min)
  log(f"protocol_return: alignment R^2 {r2} [{time.time() - t0:.0f}s]")
  sp = starts[:s.num_spread_starts]
  spread = {f"{t:g}": sample_spread(ctx, s, sp, jax.random.fold_in(key, 2000 + i), t)
            for i, t in enumerate(s.spread_temperatures)}
  spread_adam = adam_seed_spread(ctx, s, sp, adam["best_lr_at"], jax.random.fold_in(key, 3000))
  log(f"protocol_return: spread {spread}, Adam seeds {spread_adam} [{time.time() - t0:.0f}s]")
  gf, af = (gpt_update_flops(ctx.loaded, num_sampling_steps=s.num_sampling_steps,
                             guidance=s.guidance), adam_step_flops(ctx.task))
  clock = wall_clock(ctx, s, ids)
  targets = {f"one update: median return >= {s.success_return:g}":
             gpt["median"][1] >= s.success_return,
             "R^2 pooled >= 0.9": r2["pooled"] >= 0.9}
  rep = {**split_record(s, split),
         "settings_file": str(settings_path), "settings_created_utc": doc["created_utc"],
         "test_started_utc": started.isoformat(timespec="seconds"), "rule": doc["rule"],
         "settings": s.to_json(), **ctx.describe(), "gpt": gpt, "adam": adam,
         "moved_median": {"gpt": float(np.median(np.linalg.norm(nets[1] - starts, axis=1))),
                          "adam": float(np.median(np.linalg.norm(adam_nets - starts, axis=1)))},
         "prompt_alignment": {"r2": r2, "prompts": prompts.round(2).tolist(),
                              "achieved": achieved.round(2).tolist()},
         "spread": spread, "spread_adam_seeds": spread_adam,
         "compute": {"gpt": gf, "adam": af, "adam_steps_per_update": compute_ratio(gf, af),
                     "wall_clock": clock},
         "targets": targets, "seconds": time.time() - t0}
  outp.mkdir(parents=True, exist_ok=True)
  (outp / "report.json").write_text(json.dumps(rep, indent=1))
  (outp / "report.md").write_text(_markdown(rep))
  log(f"protocol_return: targets {targets}; wrote {outp / 'report.json'} and report.md")
  return rep


def _markdown(rep: dict[str, Any]) -> str:
  s, g, a, r2 = rep["settings"], rep["gpt"], rep["adam"], rep["prompt_alignment"]["r2"]
  fl, split = rep["compute"], rep.get("split", "test")
  n = s["num_inits"] if split == "test" else s["num_validation_inits"]
  lines = [f"# G.pt return-protocol report: {s['weights']}{split_title(split)}", "",
           f"Settings file `{rep['settings_file']}`, written {rep['settings_created_utc']} "
           f"(UTC); {split} figures computed from {rep['test_started_utc']}. {rep['rule']}", "",
           f"Prompt {s['target']:.4g}, temperature {s['temperature']:g}, guidance "
           f"{s['guidance']:g}, {s['num_sampling_steps']} sampling steps; {n} {split} "
           f"inits (fresh random policies), returns on {s['eval_episodes']} episodes.", "",
           "| measurement | value |", "| --- | --- |",
           f"| median return of the inits | {g['median'][0]:.1f} |",
           f"| G.pt median return after 1 .. {s['repeats']} updates | "
           + " / ".join(f"**{v:.1f}**" if i == 0 else f"{v:.1f}"
                        for i, v in enumerate(g['median'][1:])) + " |",
           f"| G.pt one update: mean; share >= {s['success_return']:g} | {g['mean'][1]:.1f}; "
           f"{g['fraction_at_least_success'][1]:.0%} |",
           f"| tuned Adam (REINFORCE) median at {a['at']} steps (lr {a['best_lr_at']:g}"
           f"{', grid edge' if a['best_lr_on_grid_edge'] else ''}); share >= "
           f"{s['success_return']:g} | {a['median_at']:.1f}; "
           f"{a['fraction_at_least_success']:.0%} |",
           f"| Adam steps for its median curve to reach G.pt's one-update median "
           f"({a['level']:.1f}) / {s['success_return']:g} | {a['steps_to_match']} / "
           f"{a['steps_to_success']} |",
           f"| prompt alignment R^2 pooled / per net / prompts >= {r2['high_min']:g} "
           f"({r2['num_high']} pairs) | {r2['pooled']:.3f} / {r2['per_net_mean']:.3f} / "
           f"{r2['high'] if r2['high'] is None else round(r2['high'], 3)} |",
           f"| compute, wall clock (one network, jitted, this CPU): one update vs one Adam step "
           f"| {fl['wall_clock']['gpt_update_s'] * 1e3:.1f} ms vs "
           f"{fl['wall_clock']['adam_step_s'] * 1e3:.1f} ms = "
           f"{fl['wall_clock']['adam_steps_per_update']:.1f} Adam steps |",
           f"| compute, XLA FLOPs (an Adam step's episode loop counted once: a lower bound) | "
           f"{fl['gpt']['per_update']:.3g} vs {fl['adam']['per_step']:.3g} |",
           f"| L2 moved from the init, G.pt one update / Adam at {a['at']} | "
           f"{rep['moved_median']['gpt']:.2f} / {rep['moved_median']['adam']:.2f} |", "",
           f"Spread of {s['spread_samples']} samples from each of {s['num_spread_starts']} "
           f"starts (median over starts of the median permutation-aligned pairwise L2):", "",
           "| temperature | median return | share >= success | aligned spread | raw spread | "
           "moved |", "| --- | --- | --- | --- | --- | --- |"]
  for t, v in rep["spread"].items():
    lines.append(f"| {t} | {v['median_return']:.1f} | {v['fraction_at_least_success']:.0%} | "
                 f"{v['aligned_pairwise_median']:.3f} | {v['raw_pairwise_median']:.3f} | "
                 f"{v['moved_median']:.3f} |")
  sa = rep["spread_adam_seeds"]
  lines += [f"| Adam, {s['spread_samples']} batch seeds, lr {sa['lr']:g}, {a['at']} steps | "
            f"{sa['median_return']:.1f} | | {sa['aligned_pairwise_median']:.3f} | | "
            f"{sa['moved_median']:.3f} |", "",
            "Targets: " + ", ".join(f"{k}: {v}" for k, v in rep["targets"].items()), ""]
  return "\n".join(lines)


_SETTING_FLAGS = ("weights", "dataset", "num_inits", "num_validation_inits", "eval_episodes",
                  "repeats", "adam_lrs", "adam_at", "curve_episodes", "num_align_nets",
                  "num_prompts", "high_prompt_min", "spread_temperatures", "num_spread_starts",
                  "spread_samples", "success_return", "num_sampling_steps", "seed")
_VALIDATION_FLAGS = ("temperatures", "target_fractions", "guidances")
_FLOAT_LISTS = ("adam_lrs", "spread_temperatures")


def _flag_value(fv: flags.FlagValues, name: str) -> Any:
  v = fv[name].value
  if name in _FLOAT_LISTS:
    return tuple(float(x) for x in v)
  return v


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  present = {n for n in _SETTING_FLAGS + _VALIDATION_FLAGS if fv[n].present}
  floats = lambda xs: [float(x) for x in xs]  # noqa: E731
  try:
    if fv.validation_only:
      refuse_split_flag(fv)
      kw = {n: _flag_value(fv, n) for n in _SETTING_FLAGS
            if n not in ("weights", "dataset") and n in present}
      choose_return_settings(fv.weights, fv.settings, fv.dataset,
                             temperatures=floats(fv.temperatures),
                             target_fractions=floats(fv.target_fractions),
                             guidances=floats(fv.guidances), save_settings=fv.save_settings,
                             **kw)
    else:
      extra = sorted(present & set(_VALIDATION_FLAGS))
      if extra:
        raise ValueError(f"--{extra[0]} is a validation setting: pass it with --validation_only")
      evaluate_return_protocol(fv.settings, fv.out, split=fv.split,
                               **{n: _flag_value(fv, n) for n in _SETTING_FLAGS if n in present})
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"gpt.protocol_return: {e}")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command line's flags in ``fv``."""
  d = {f.name: f.default for f in dataclasses.fields(ReturnProtocolSettings)}
  flags.DEFINE_string("settings", None, "The settings file (JSON): written by "
                      "--validation_only, read by the test step.", required=True, flag_values=fv)
  flags.DEFINE_bool("validation_only", False, "Choose the settings on validation inits and "
                    "write the settings file; compute no test figure.", flag_values=fv)
  flags.DEFINE_bool("save_settings", False, "Validation: also record the chosen temperature, "
                    "guidance and target in the weights' manifest (the optimizer's defaults).",
                    flag_values=fv)
  flags.DEFINE_string("out", "runs/gpt_cartpole_protocol", "Test step: output directory.",
                      flag_values=fv)
  define_split_flag(fv)
  flags.DEFINE_string("weights", "lopt/weights/gpt_cartpole", "G.pt weights directory.",
                      flag_values=fv)
  flags.DEFINE_string("dataset", None, "The model's training data; default: its manifest's "
                      "extra.dataset.", flag_values=fv)
  for name in ("num_inits", "num_validation_inits", "eval_episodes", "repeats", "adam_at",
               "curve_episodes", "num_align_nets", "num_spread_starts", "num_sampling_steps"):
    flags.DEFINE_integer(name, d[name], f"ReturnProtocolSettings.{name}.", lower_bound=1,
                         flag_values=fv)
  flags.DEFINE_integer("num_prompts", d["num_prompts"], "Prompts per alignment network.",
                       lower_bound=2, flag_values=fv)
  flags.DEFINE_integer("spread_samples", d["spread_samples"], "Samples per spread start.",
                       lower_bound=2, flag_values=fv)
  flags.DEFINE_integer("seed", d["seed"], "Sampling seed.", flag_values=fv)
  flags.DEFINE_float("high_prompt_min", d["high_prompt_min"], "Lower bound of the high "
                     "prompts.", flag_values=fv)
  flags.DEFINE_float("success_return", d["success_return"], "The target median return.",
                     flag_values=fv)
  for name in _FLOAT_LISTS:
    flags.DEFINE_list(name, [f"{v:g}" for v in d[name]], f"ReturnProtocolSettings.{name}.",
                      flag_values=fv)
  flags.DEFINE_list("temperatures", ["0", "0.3", "0.7"], "Validation: temperatures tried.",
                    flag_values=fv)
  flags.DEFINE_list("target_fractions", ["0", "0.05", "0.1", "0.2"],
                    "Validation: target grid best + f (ref - best).", flag_values=fv)
  flags.DEFINE_list("guidances", ["0", "0.1", "0.3", "0.5"], "Validation: guidance scales.",
                    flag_values=fv)


def run() -> None:
  """The command line: ``python -m meta_train.gpt.protocol_return``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
