"""Line numbers for TOML entries and keys (``tomllib`` gives none), so errors can point at the line.

A line scan, not a second parser: it follows table headers (``[[action]]``, ``[placement.stickiness]``,
``[contact.email]``), ``key =`` lines, dotted keys and one-line inline tables. Anything it cannot place
falls back to the line of the enclosing entry, which is still the right place to look.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=(.*)$")
_INLINE_KEY = re.compile(r"([A-Za-z0-9_\-]+)\s*=")

Path = tuple[str | int, ...]


def _parts(dotted: str) -> list[str]:
    return [p.strip() for p in dotted.split(".")]


class SourceLines:
    """Where each table and key of a TOML text starts (1-based line numbers).

    Paths name tables as the parsed document does: ``("action", 2)`` is the third ``[[action]]``,
    ``("placement", 0, "stickiness")`` its subtable, ``("contact", "email")`` a plain table.
    """

    def __init__(self, text: str) -> None:
        self._tables: dict[Path, int] = {(): 1}
        self._keys: dict[tuple[Path, str], int] = {}
        arrays: dict[str, int] = {}  # array-of-tables name -> entries seen
        current: Path = ()
        for n, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                parts = _parts(header.group(2))
                if header.group(1) == "[[":
                    name = ".".join(parts)
                    arrays[name] = arrays.get(name, 0) + 1
                    current = (*parts, arrays[name] - 1)
                elif parts[0] in arrays:
                    current = (parts[0], arrays[parts[0]] - 1, *parts[1:])
                else:
                    current = tuple(parts)
                self._tables.setdefault(current, n)
                continue
            key = _KEY.match(line)
            if not key:
                continue
            parts = _parts(key.group(1))
            path = current
            for part in parts[:-1]:
                self._keys.setdefault((path, part), n)
                path = (*path, part)
            self._keys.setdefault((path, parts[-1]), n)
            rest = key.group(2).strip()
            if rest.startswith("{"):
                inner = (*path, parts[-1])
                self._tables.setdefault(inner, n)
                for m in _INLINE_KEY.finditer(rest):
                    self._keys.setdefault((inner, m.group(1)), n)

    def line_of(self, path: Path, key: str | None = None) -> int:
        """Line of ``key`` in table ``path`` (or of the table it names), else of the table, else a parent."""
        if key is not None and (path, key) in self._keys:
            return self._keys[(path, key)]
        if key is not None and (*path, key) in self._tables:  # the key names a table: [contact.email]
            return self._tables[(*path, key)]
        while path not in self._tables:
            path = path[:-1]
        return self._tables[path]
