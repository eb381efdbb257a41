"""Name -> optimizer class, case-insensitive, as `mxnet.optimizer.register/create`."""
from __future__ import annotations

import difflib
import warnings

_REGISTRY: dict[str, type] = {}


def register(klass):
    """Register an optimizer class under its lower-cased name (and its spec aliases). Returns it,
    so it can be used as a decorator. Registering a name again replaces it, with a warning."""
    names = klass.__dict__.get("aliases") or (klass.__name__.lower(),)
    for name in names:
        name = name.lower()
        old = _REGISTRY.get(name)
        if old is not None and old is not klass:
            warnings.warn(f"New optimizer {klass.__module__}.{klass.__name__} is overriding existing optimizer "
                          f"{old.__module__}.{old.__name__} (registered as {name!r})", UserWarning, stacklevel=2)
        _REGISTRY[name] = klass
    return klass


def create(name, **kwargs):
    """Instantiate the optimizer registered as `name` (case-insensitive) with `kwargs`."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a string, got {type(name).__name__}")
    klass = _REGISTRY.get(name.lower())
    if klass is None:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Cannot find optimizer {name!r}{hint} Registered: {', '.join(sorted(_REGISTRY))}")
    return klass(**kwargs)


def registered() -> dict[str, type]:
    """A copy of the registry: name -> class."""
    return dict(_REGISTRY)
