"""The two registries of the input side: data sources (by `config.data.source`) and pipelines (by name).

A source registers itself in its own file (`input_pipeline/sources/<name>.py`, or any module a user imports,
a test file included):

    @register_source("my_source", fields=[("text", "label")])
    def load(request: source.Request) -> source.InMemory | source.Streamed: ...

A pipeline registers its class: `register_pipeline("text_classification", TextClassificationData)`.
Nothing else switches on a source or pipeline name: lookups go through here.
"""

import dataclasses
import importlib
from collections.abc import Callable, Iterable

import ml_collections

# Modules that register the built-in sources and pipelines when first looked up.
_BUILTIN_SOURCES = ("input_pipeline.sources",)
_BUILTIN_PIPELINES = (
    "input_pipeline.text_classification",
    "input_pipeline.text_corpus",
    "input_pipeline.image_classification",
)


@dataclasses.dataclass(frozen=True)
class SourceEntry:
    """A registered source: how to load it, what it can serve, how to check its config keys."""

    name: str
    load: Callable  # (source.Request) -> source.InMemory | source.Streamed
    # The example field sets it can serve, e.g. {("text", "label"), ("text",)}; None: whatever is asked.
    fields: frozenset[tuple[str, ...]] | None
    # (config, fields) -> None; raises on a bad config key of this source, before any data is read.
    check: Callable[[ml_collections.ConfigDict, tuple[str, ...]], None] | None
    streaming: bool  # True: not held in memory nor counted up front (TFDS); the order comes from a buffer.

    def serves(self, fields: tuple[str, ...]) -> bool:
        return self.fields is None or tuple(fields) in self.fields


_SOURCES: dict[str, SourceEntry] = {}
_PIPELINES: dict[str, Callable] = {}


def register_source(name: str, load: Callable | None = None, *, fields: Iterable[tuple[str, ...]] | None = None,
                    check: Callable | None = None, streaming: bool = False):
    """Registers `load` as config.data.source=`name`; usable as a decorator (`load` left out).

    Registering a name again replaces the entry (a test may redefine its source).
    """

    def add(function: Callable) -> Callable:
        field_sets = None if fields is None else frozenset(tuple(f) for f in fields)
        _SOURCES[name] = SourceEntry(name, function, field_sets, check, streaming)
        return function

    return add if load is None else add(load)


def _import_builtins(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


def source_names(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The registered sources that can serve examples with these fields, in registration order."""
    _import_builtins(_BUILTIN_SOURCES)
    return tuple(name for name, entry in _SOURCES.items() if entry.serves(fields))


def source(name: str, fields: tuple[str, ...]) -> SourceEntry:
    """The source config.data.source=`name`, which must serve `fields`."""
    names = source_names(fields)
    if name not in names:
        raise ValueError(f"config.data.source={name!r}: use one of {names}.")
    return _SOURCES[name]


def register_pipeline(name: str, factory: Callable) -> Callable:
    """Registers `factory(config, process_index, process_count)` under `name` for `create_data`."""
    _PIPELINES[name] = factory
    return factory


def pipeline(name: str) -> Callable:
    _import_builtins(_BUILTIN_PIPELINES)
    if name not in _PIPELINES:
        raise ValueError(f"No input pipeline {name!r}; registered: {sorted(_PIPELINES)}.")
    return _PIPELINES[name]
