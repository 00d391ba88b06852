"""scikit-learn-style parameter handling shared by every normalcy estimator."""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any, Self

from normalcy.errors import NotFittedError, ParameterError


class Estimator:
    """`__init__` only stores parameters; `get_params`/`set_params` read them back (sklearn contract)."""

    @classmethod
    def _param_names(cls) -> list[str]:
        """The `__init__` parameter names (cached per class: cross-conformal fits ask for them many times)."""
        return list(_init_param_names(cls))

    def _store_params(self, values: dict[str, Any]) -> None:
        """sklearn rule: every `__init__` argument stored as-is under its own name (call first, with `locals()`)."""
        for name, value in values.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The constructor parameters and their current values."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Change constructor parameters in place (unknown names raise ParameterError)."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ParameterError(f"{type(self).__name__} has no parameter {name!r}; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _fitted_attributes(self) -> list[str]:
        return [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]

    def __sklearn_is_fitted__(self) -> bool:
        return bool(self._fitted_attributes())

    def check_fitted(self) -> None:
        """Raise NotFittedError unless `fit` has run."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with normal data first."
            )


def clone(estimator: Estimator) -> Estimator:
    """A new unfitted estimator with the same parameters."""
    return type(estimator)(**estimator.get_params())


@cache
def _init_param_names(cls: type) -> tuple[str, ...]:
    """The names in `cls.__init__`'s signature, without `self` and `**kwargs`."""
    sig = inspect.signature(cls.__init__)
    return tuple(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)
