"""Ids, page numbers and days from URLs and query strings, bounded before they reach the database.

An integer past 64 bits makes SQLite raise OverflowError, one past 32 bits is refused by PostgreSQL's
INTEGER columns, a page of 10**20 makes an offset past both, and the day after 9999-12-31 does not
exist: each of them was a 500. So there is one way in for each:

- every route with a database id in its path declares it `<id:name>` (`IdConverter`): 1 to MAX_ID,
  anything else matches no route and is a 404, like an id that does not exist;
- a page number comes from `page_arg()`: clamped to the pages there can be, the first page when it is
  not a whole number (a list is never refused for its page);
- a day comes from `day_arg()`: a date, or the sentence that says why it is not one;
- a number typed into a filter is an id only through `as_id()`.
"""
from __future__ import annotations

import re
from datetime import date

from flask import Flask, request
from werkzeug.routing import IntegerConverter

MAX_ID = 2**31 - 1      # the integer columns' range on every supported database (PostgreSQL INTEGER)
MAX_PAGE = 1_000_000    # far past any real list; keeps page x per-page offsets inside the database's integers
_WHOLE_NUMBER = re.compile(r"([+-]?)0*([0-9]+)")


class IdConverter(IntegerConverter):
    """`<id:user_id>`: a database id, 1 to MAX_ID; any other path segment matches no route (404)."""

    def __init__(self, url_map) -> None:
        super().__init__(url_map, min=1, max=MAX_ID)


def as_id(text: str | None) -> int | None:
    """`text` as a database id, or None when it is not one (not digits, 0, or past MAX_ID)."""
    text = (text or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None


def page_arg(name: str = "page") -> int:
    """The page number in the query string, clamped to 1..MAX_PAGE; 1 when absent or not a whole number."""
    number = _WHOLE_NUMBER.fullmatch((request.args.get(name) or "").strip())
    if number is None or number.group(1) == "-":
        return 1
    digits = number.group(2)   # counted before int(): Python refuses to convert thousands of digits
    return MAX_PAGE if len(digits) > len(str(MAX_PAGE)) else min(max(int(digits), 1), MAX_PAGE)


def day_arg(name: str) -> tuple[date | None, str | None]:
    """(the day in the query string, None), (None, None) when absent, or (None, why it is not a day)."""
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None, None
    try:
        day = date.fromisoformat(raw) if len(raw) == 10 else None
    except ValueError:
        day = None
    if day is None:
        return None, f"“{name}” must be a date like 2026-01-31; it was ignored."
    return day, None


def init_app(app: Flask) -> None:
    # Before any blueprint: a rule's converters are looked up when the rule is added.
    app.url_map.converters["id"] = IdConverter
