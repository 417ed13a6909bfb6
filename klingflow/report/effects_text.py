"""Effects catalogues for a terminal (one table per account) and as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from klingflow.catalogue import Catalogue, EffectEntry, service_name

if TYPE_CHECKING:
    from klingflow.live_effects import KeptCatalogue

_COLUMNS = ("name", "modes", "prompt", "available")


def format_catalogues(kept: Sequence[KeptCatalogue]) -> str:
    """Each catalogue as a headline, a table of its entries and where it is kept."""
    return "\n\n".join(_block(k.catalogue, f"kept in {k.path}") for k in kept)


def catalogues_json(kept: Sequence[KeptCatalogue]) -> list[dict[str, Any]]:
    return [{**k.catalogue.to_json(), "kept": str(k.path)} for k in kept]


def _block(catalogue: Catalogue, footer: str) -> str:
    rows = [_COLUMNS, *(_row(e) for e in catalogue.effects)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    table = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join([_headline(catalogue), *table, footer])


def _headline(catalogue: Catalogue) -> str:
    who = f"for {catalogue.account}" if catalogue.account else "of the default account"
    return (f"effects of {service_name(catalogue.backend)} {who}, fetched "
            f"{catalogue.fetched_time}: {len(catalogue.effects)} listed, "
            f"{len(catalogue.available)} available")


def _row(entry: EffectEntry) -> tuple[str, str, str, str]:
    return (entry.name, ", ".join(entry.modes) or "-", "yes" if entry.prompt else "no",
            _availability(entry))


def _availability(entry: EffectEntry) -> str:
    if entry.available:
        return "yes"
    return "no (effectSupported: false)" if not entry.supported else "no (no modes: retired)"
