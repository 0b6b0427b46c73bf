"""The name registry: find an actor's stable ref by path or by its registered name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.errors import NameNotFound

if TYPE_CHECKING:
    from runtime.cell import Cell
    from runtime.ref import Ref


class Registry:
    """Paths are unique (``root/store/redis``); a short name resolves while it is unique.

    Short names let an actor say ``lookup("sender")`` without knowing where in the tree
    the sender lives, which keeps ``app.py`` free to rearrange the tree.
    """

    def __init__(self) -> None:
        self._by_path: dict[str, Cell] = {}
        # One cell per name, a list only once a name is shared: most names are unique
        # (``user:42``) and a list each would cost 10,000 allocations per 10,000 users.
        self._by_name: dict[str, Cell | list[Cell]] = {}

    def register(self, cell: Cell) -> None:
        self._by_path[cell.path] = cell
        by_name = self._by_name
        name = cell.name
        other = by_name.setdefault(name, cell)
        if other is cell:
            return
        if isinstance(other, list):
            other.append(cell)
        else:
            by_name[name] = [other, cell]

    def unregister(self, cell: Cell) -> None:
        if self._by_path.get(cell.path) is cell:
            del self._by_path[cell.path]
        entry = self._by_name.get(cell.name)
        if entry is cell:
            del self._by_name[cell.name]
        elif isinstance(entry, list) and cell in entry:
            entry.remove(cell)
            if len(entry) == 1:
                self._by_name[cell.name] = entry[0]

    def _named(self, name: str) -> list[Cell]:
        entry = self._by_name.get(name)
        if entry is None:
            return []
        return entry if isinstance(entry, list) else [entry]

    def cell(self, path: str) -> Cell | None:
        return self._by_path.get(path)

    def get(self, name: str) -> Ref | None:
        """The ref at this path, or the only actor with this name; None otherwise."""
        cell = self._by_path.get(name)
        if cell is None:
            entry = self._by_name.get(name)
            if entry is None or isinstance(entry, list):
                return None
            cell = entry
        return cell.ref

    def lookup(self, name: str) -> Ref:
        ref = self.get(name)
        if ref is None:
            cells = self._named(name)
            if len(cells) > 1:
                raise NameNotFound(f"{name!r} is ambiguous: {[c.path for c in cells]}")
            raise NameNotFound(f"no actor registered as {name!r}")
        return ref

    def paths(self) -> list[str]:
        return sorted(self._by_path)

    def __len__(self) -> int:
        return len(self._by_path)
