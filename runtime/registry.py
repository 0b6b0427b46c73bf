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
        self._by_name: dict[str, list[Cell]] = {}

    def register(self, cell: Cell) -> None:
        self._by_path[cell.path] = cell
        self._by_name.setdefault(cell.name, []).append(cell)

    def unregister(self, cell: Cell) -> None:
        if self._by_path.get(cell.path) is cell:
            del self._by_path[cell.path]
        cells = self._by_name.get(cell.name)
        if cells is not None and cell in cells:
            cells.remove(cell)
            if not cells:
                del self._by_name[cell.name]

    def cell(self, path: str) -> Cell | None:
        return self._by_path.get(path)

    def get(self, name: str) -> Ref | None:
        """The ref at this path, or the only actor with this name; None otherwise."""
        cell = self._by_path.get(name)
        if cell is None:
            cells = self._by_name.get(name)
            if cells is None or len(cells) != 1:
                return None
            cell = cells[0]
        return cell.ref

    def lookup(self, name: str) -> Ref:
        ref = self.get(name)
        if ref is None:
            cells = self._by_name.get(name, [])
            if len(cells) > 1:
                raise NameNotFound(f"{name!r} is ambiguous: {[c.path for c in cells]}")
            raise NameNotFound(f"no actor registered as {name!r}")
        return ref

    def paths(self) -> list[str]:
        return sorted(self._by_path)

    def __len__(self) -> int:
        return len(self._by_path)
