"""Merging a partial update into the current state of an entity (pure)."""

from __future__ import annotations

from typing import TypeVar

from canonical.base import LedgerModel

E = TypeVar("E", bound=LedgerModel)


def merge_partial(current: E | None, update: E, changed_fields: tuple[str, ...] | None) -> E:
    """The update's `changed_fields` over `current`; every other field of `current` is kept.

    A full snapshot (`changed_fields` None) or a first sighting replaces wholesale.
    """
    if changed_fields is None or current is None:
        return update
    if type(current) is not type(update):
        raise TypeError(f"cannot merge {type(update).__name__} into {type(current).__name__}")
    return current.model_copy(update={name: getattr(update, name) for name in changed_fields})
