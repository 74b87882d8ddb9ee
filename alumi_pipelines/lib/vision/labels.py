"""The canonical label schema and the class map every label is resolved against."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# One row per box. Coordinates are normalised to [0, 1] by the image's real width and height.
LABEL_COLUMNS: dict[str, str] = {
    "image_id": "str",  # sha256 of the image bytes (content address in raw/)
    "class_name": "str",
    "class_id": "int32",
    "x_center": "float64",
    "y_center": "float64",
    "width": "float64",
    "height": "float64",
    "source": "str",  # alumi | yolo | voc | coco | labelme | correction
    "source_file": "str",  # the annotation file (or correction id) the box came from
    "batch": "str",  # landing batch (partition key) it arrived in
}


def label_schema():
    """The canonical label schema as a polars schema."""
    import polars as pl

    types = {"str": pl.Utf8, "int32": pl.Int32, "float64": pl.Float64}
    return {name: types[t] for name, t in LABEL_COLUMNS.items()}


def empty_labels():
    import polars as pl

    return pl.DataFrame(schema=label_schema())


class UnknownClassError(KeyError):
    pass


@dataclass(frozen=True)
class ClassMap:
    """Ordered class names (their index is the class id) plus aliases from source names.

    Aliases map a dataset's own names (or numeric ids as strings) to canonical names; matching is
    case-insensitive and treats spaces, dashes and underscores alike ("Oil spots" == "oil_spots").
    """

    names: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("class map: needs at least one class")
        if len({_norm(n) for n in self.names}) != len(self.names):
            raise ValueError(f"class map: class names {self.names} are not unique")
        for src, dst in self.aliases.items():
            if dst not in self.names:
                raise ValueError(f"class map: alias {src!r} points to {dst!r}, which is not a class")

    @classmethod
    def of(cls, names: Iterable[str], aliases: Mapping[str, str] | None = None) -> ClassMap:
        return cls(tuple(names), dict(aliases or {}))

    def resolve(self, name: str | int) -> tuple[str, int]:
        """(canonical name, class id) of a source class name or id; UnknownClassError otherwise."""
        key = _norm(str(name))
        lookup = {_norm(n): n for n in self.names}
        lookup.update({_norm(k): v for k, v in self.aliases.items()})
        if key in lookup:
            canonical = lookup[key]
            return canonical, self.names.index(canonical)
        raise UnknownClassError(f"class {name!r} is not in the class map {list(self.names)}")

    def with_id_aliases(self, source_names: Sequence[str]) -> ClassMap:
        """Alias a dataset's numeric ids (index into ``source_names``) to canonical names."""
        extra = {}
        for idx, src in enumerate(source_names):
            try:
                extra[str(idx)] = self.resolve(src)[0]
            except UnknownClassError:
                continue
        return ClassMap(self.names, {**extra, **self.aliases})


def dataset_classes(class_names: Sequence[str] | None, box_names: Iterable[str]) -> list[str]:
    """The classes a dataset names: its declared list (e.g. a YOLO classes.txt) when it has one, else the
    distinct class names of its boxes in order of first appearance. Numeric YOLO ids are not names."""
    if class_names:
        return list(class_names)
    seen: dict[str, str] = {}
    for name in box_names:
        if name.strip() and not name.strip().isdigit():
            seen.setdefault(_norm(name), name.strip())
    return list(seen.values())


def unknown_classes(class_map: Sequence[str], names: Iterable[str]) -> list[str]:
    """The names that do not resolve in the class map (case, spaces, dashes and underscores ignored)."""
    known = {_norm(n) for n in class_map}
    return [n for n in names if _norm(n) not in known]


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
