"""A name -> entry table with the errors every registry of `lm` gives (model families, tasks)."""

from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries with a `name`, kept in registration order; `key` is the config key that names one."""

    def __init__(self, what: str, key: str):
        self.what, self.key = what, key
        self._entries: dict[str, Entry] = {}

    def register(self, entry: Entry, *, replace: bool = False) -> Entry:
        """Adds `entry`; registering a taken name again (with another entry) is an error unless `replace`."""
        name = entry.name
        if name in self._entries and not replace and self._entries[name] != entry:
            raise ValueError(f"{self.what} {name!r} is already registered; pass replace=True to replace it.")
        self._entries[name] = entry
        return entry

    def entries(self) -> dict[str, Entry]:
        return dict(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"{self.key}={name!r} is not known; choose one of {sorted(self._entries)}.")
        return self._entries[name]
