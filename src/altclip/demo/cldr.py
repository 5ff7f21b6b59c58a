"""General parallel text for phase 1 beyond the emoji names: CLDR's display names, as Babel ships them.

The paper distils on large general parallel corpora; the miniature's stand-in is what CLDR translates into all
14 demo languages besides the emoji names. Each source yields items, an item being one meaning in every
language ({language: text}):

    languages   names of languages ("Swiss German", "瑞士德语", ...)
    scripts     names of writing systems ("Cyrillic", "西里尔文", ...)
    currencies  names of currencies ("Japanese Yen", "日元", ...)
    units       long names of measurement units ("kilometers", "公里", ...)
    calendar    month and weekday names
    locales     names of locales: a language and where it is spoken ("French (Canada)", "法语 (加拿大)", ...)
    timezones   time zones by where they are ("Japan Time", "Canada (Toronto) Time", "日本时间", ...; Babel
                gives Russian the summer-time pattern, "Япония, летнее время")

Territory names are never items of their own: the flag task (``demo.zeroshot``) classifies by them, so a country's
name reaches phase 1 only inside a longer phrase (a locale's or a time zone's name), never as a standalone target,
and no item equals a territory's name in any language. The flag task's prompts appear nowhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from altclip.demo.data import LANGUAGES
from altclip.errors import InputError

SOURCES = ("languages", "scripts", "currencies", "units", "calendar", "locales", "timezones")


@functools.cache
def babel_locales() -> dict[str, Any]:
    """Babel's locale of each demo language, whose CLDR data names things in it."""
    from babel import Locale

    return {lang: Locale.parse(lang) for lang in LANGUAGES}


def _common(tables: dict[str, dict[Any, str]]) -> Iterator[dict[str, str]]:
    """The keys every language names, each as {language: name}, in key order."""
    keys = set.intersection(*(set(table) for table in tables.values()))
    for key in sorted(keys, key=str):
        yield {lang: tables[lang][key] for lang in LANGUAGES}


def _units(locale: Any) -> dict[str, str]:
    return {unit: names["long"] for unit, names in locale._data["unit_display_names"].items() if "long" in names}


def _calendar(locale: Any) -> dict[str, str]:
    months = {f"month-{k}": v for k, v in locale.months["format"]["wide"].items()}
    return months | {f"day-{k}": v for k, v in locale.days["format"]["wide"].items()}


def _locale_names(locales: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Every Babel locale with a territory, named in each language (its language and territory together)."""
    from babel import Locale, localedata

    tables: dict[str, dict[str, str]] = {lang: {} for lang in LANGUAGES}
    for identifier in localedata.locale_identifiers():
        parsed = Locale.parse(identifier)
        if parsed.territory is None:
            continue
        for lang, locale in locales.items():
            name = parsed.get_display_name(locale)
            if name:
                tables[lang][identifier] = name
    return tables


def _timezones(locale: Any) -> dict[str, str]:
    """Each time zone of a territory (CLDR's zone list), named by its place."""
    from babel.core import get_global
    from babel.dates import get_timezone_location

    zones = (zone for zone, territory in get_global("zone_territories").items() if not zone.startswith("Etc/"))
    return {zone: get_timezone_location(zone, locale=locale) for zone in zones}


def check_sources(sources: tuple[str, ...]) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown phase 1 source(s) {unknown}; choose from {', '.join(SOURCES)}")


@functools.lru_cache(maxsize=4)
def cldr_items(sources: tuple[str, ...]) -> list[dict[str, str]]:
    """The items of the chosen sources (see the module docstring), without repeats and without any item that
    is a territory's name in some language. Cached: a demo run reads them for its tokenizer and for phase 1
    (callers must not change the list)."""
    check_sources(sources)
    locales = babel_locales()
    territories = {lang: set(locale.territories.values()) for lang, locale in locales.items()}
    tables = {
        "languages": lambda: {lang: dict(loc.languages) for lang, loc in locales.items()},
        "scripts": lambda: {lang: dict(loc.scripts) for lang, loc in locales.items()},
        "currencies": lambda: {lang: dict(loc.currencies) for lang, loc in locales.items()},
        "units": lambda: {lang: _units(loc) for lang, loc in locales.items()},
        "calendar": lambda: {lang: _calendar(loc) for lang, loc in locales.items()},
        "locales": lambda: _locale_names(locales),
        "timezones": lambda: {lang: _timezones(loc) for lang, loc in locales.items()},
    }
    items, seen = [], set()
    for source in sources:
        for item in _common(tables[source]()):
            if item["en"] in seen or any(item[lang] in territories[lang] for lang in LANGUAGES):
                continue
            seen.add(item["en"])
            items.append(item)
    return items
