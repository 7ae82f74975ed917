"""A name -> factory table, so configs can say `method: hinton` and users can add their own."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from distillery.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. Example::

        MODELS = Registry("model")

        @MODELS.register("mlp")
        def mlp(...): ...

        MODELS.get("mlp")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
