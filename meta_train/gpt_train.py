"""``python -m meta_train.gpt_train``: the old name of :mod:`meta_train.gpt.train`.

Kept so existing commands and imports work; attributes are those of the new module.
"""

from meta_train.gpt import train as _impl

__all__ = _impl.__all__


def __getattr__(name: str):
  return getattr(_impl, name)


if __name__ == "__main__":
  _impl.run()
