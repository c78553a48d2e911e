"""``python -m meta_train.gpt_eval``: the old name of :mod:`meta_train.gpt.evaluate`.

Kept so existing commands and imports work; attributes are those of the new module.
"""

from meta_train.gpt import evaluate as _impl

__all__ = _impl.__all__


def __getattr__(name: str):
  return getattr(_impl, name)


if __name__ == "__main__":
  _impl.run()
