"""Name -> entry tables: one per kind of choosable component (backbones, architectures,
optimisers, triplet features).

Code builds from a registry's entries, and config validation and command-line ``choices``
read its names, so a component is selectable as soon as it is registered, and names are
listed nowhere else. Entries keep their registration order, which is the order error
messages and help texts list them in.

    OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")

    @OPTIMIZERS.register("adam")
    def _adam(parameters, lr, weight_decay, momentum): ...

    OPTIMIZERS.get("adam")   # the factory; an unknown name raises ValueError listing the known ones
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name. Iterating yields the names, in registration order, so a
    registry serves as a config rule's or argparse's ``choices``.

    `unknown` is the message of the ValueError for an unknown name, formatted with `kind`,
    `name` and `choices` (the tuple of known names)."""

    def __init__(self, kind: str, unknown: str = "unknown {kind} {name!r}; choose one of {choices}") -> None:
        self.kind = kind
        self.unknown = unknown
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Register `entry` as `name`; a name is registered once (a second one is a copy-paste slip)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of add: registers the decorated object and returns it unchanged."""

        def decorate(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorate

    def get(self, name: str) -> T:
        """The entry registered as `name`; ValueError (the `unknown` message) if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(self.unknown.format(kind=self.kind, name=name, choices=tuple(self._entries))) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
