"""Problems found in user objects: which object, which field, what is wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    ERROR = "error"  # the object (or the part named) is not programmed
    WARNING = "warning"  # programmed, but not the way the user probably meant
    INFO = "info"  # deliberate non-action the user may wonder about


@dataclass(frozen=True)
class Diagnostic:
    level: Level
    kind: str
    namespace: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        where = (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )
        fld = f": {self.field}" if self.field else ""
        return f"{self.level}: {where}{fld}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {
            "level": str(self.level),
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "field": self.field,
            "message": self.message,
        }


class Collector:
    """Accumulates diagnostics for one object so parsers can report without raising."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.items: list[Diagnostic] = []

    def add(self, level: Level, field: str, message: str) -> None:
        self.items.append(Diagnostic(level, self.kind, self.namespace, self.name, field, message))

    def error(self, field: str, message: str) -> None:
        self.add(Level.ERROR, field, message)

    def warning(self, field: str, message: str) -> None:
        self.add(Level.WARNING, field, message)

    def info(self, field: str, message: str) -> None:
        self.add(Level.INFO, field, message)

    @property
    def has_errors(self) -> bool:
        return any(d.level is Level.ERROR for d in self.items)
