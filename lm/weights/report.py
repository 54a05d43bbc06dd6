"""`ImportReport`: what an import of external weights did, in one format for every importer, logged once."""

import dataclasses
import logging

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ImportReport:
    """What an importer's `load(source, params, batch_stats)` did.

    loaded   our parameter paths ('/'-joined; BatchNorm statistics under 'batch_stats/') that took the source's values
    new      our paths kept as they were (fresh): a head for another number of classes, a part the source lacks
    unused   the source's names that fed nothing of ours
    ignored  the source's names that feed nothing by design (a pooler our head does not read)
    used     the source's names that fed a leaf
    notes    decisions worth a log line (resampling, a head kept fresh, channels reversed)
    `report[key]` reads a field; 'missing' and 'dropped' are older names of 'new' and 'unused'.
    """

    source: str = ""
    loaded: list[str] = dataclasses.field(default_factory=list)
    new: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    used: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    _ALIASES = {"missing": "new", "dropped": "unused"}

    def __getitem__(self, key: str) -> list[str]:
        return getattr(self, self._ALIASES.get(key, key))

    def add(self, other: "ImportReport", prefix: str = "") -> None:
        """Appends `other`'s entries; `prefix` goes in front of its paths of ours (e.g. 'batch_stats/')."""
        self.loaded += [prefix + name for name in other.loaded]
        self.new += [prefix + name for name in other.new]
        self.unused += other.unused
        self.ignored += other.ignored
        self.used += other.used
        self.notes += other.notes

    def log(self) -> None:
        for note in self.notes:
            log.info("init_from: %s", note)
        log.info("init_from %s: loaded %d parameters, %d new (%s), %d unused (%s).", self.source, len(self.loaded),
                 len(self.new), ", ".join(self.new[:8]), len(self.unused), ", ".join(self.unused[:8]))
