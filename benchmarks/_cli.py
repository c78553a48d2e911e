"""What the ``benchmarks`` command lines share: flag validators and ``main``."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from absl import app, flags, logging

__all__ = ["check", "error_message", "make_main"]


def error_message(e: Exception) -> str:
  """The text of an error (a KeyError's str() adds quotes)."""
  return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def check(fn: Callable[[Any], Any], value: Any) -> bool:
  """A flag validator: ``fn(value)``'s KeyError/ValueError/FileNotFoundError as its message."""
  try:
    fn(value)
  except (KeyError, ValueError, FileNotFoundError) as e:
    raise flags.ValidationError(error_message(e)) from None
  return True


def make_main(run: Callable[[flags.FlagValues], Any],
              errors: tuple[type[Exception], ...]) -> Callable[[Sequence[str]], None]:
  """An ``app.run`` main calling ``run(flags.FLAGS)``.

  Extra arguments are a usage error; orbax's and jax's INFO lines are kept out
  unless ``--verbosity`` is given; ``errors`` (not flag problems) print one line,
  ``error: ...``, without usage text, and exit with status 1.
  """

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      run(flags.FLAGS)
    except errors as e:
      print(f"error: {error_message(e)}", file=sys.stderr)
      sys.exit(1)

  return main
