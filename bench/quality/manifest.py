"""The labels of the evaluation set: data/manifest.json, one entry per photo, read into `Entry`s and checked.

A label says what a proctor looking at the picture would say, not what a detector finds:
  faces       visible faces that a proctor would count as a person present (a painting or a drawn face is 0)
  persons     people in view, including those whose face is hidden or cut by the frame
  person      identity of a single-subject photo when known ("obama", "john_salley", "anon_<photo>"), else null
  phones      mobile phones in view
  poor_image  too dark, washed out, blurred or covered: a picture nobody can judge
  gaze        optional {"yaw": deg, "pitch": deg}, only where truly known
  tags        free words a figure is broken down by ("close_up", "group", "dark", "skin_light", ...)
  source, licence        where the picture comes from and under which terms (see PROVENANCE.md)
  composite   the picture was assembled from several (a collage, a phone pasted in)
  derived_from           the data-set file this one was cut or altered from (null for a photo as shipped)
  photo       optional: the photograph a file shows when that is not its derived_from root (a collage's
              tiles are separate photographs)
  notes       optional: anything a reader needs to trust the label
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = ("file", "faces", "persons", "person", "phones", "poor_image", "tags", "source", "licence", "composite",
            "derived_from")
OPTIONAL = ("gaze", "photo", "notes")


@dataclass(frozen=True)
class Entry:
    file: str
    faces: int
    persons: int
    person: str | None
    phones: int
    poor_image: bool
    tags: tuple[str, ...]
    source: str
    licence: str
    composite: bool
    derived_from: str | None
    gaze: dict[str, float] | None = None
    photo: str | None = None
    notes: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Entry:
        known = {key: raw[key] for key in (*REQUIRED, *OPTIONAL) if key in raw}
        known["tags"] = tuple(known.get("tags", ()))
        extra = {key: value for key, value in raw.items() if key not in REQUIRED and key not in OPTIONAL}
        return cls(**known, extra=extra)


def load(data_dir: Path) -> list[Entry]:
    raw = json.loads((data_dir / "manifest.json").read_text())
    return [Entry.from_json(item) for item in raw]


def _type_errors(raw: dict[str, Any]) -> list[str]:
    name = raw.get("file", "?")
    checks: list[tuple[str, bool]] = [
        ("file", isinstance(raw.get("file"), str) and bool(raw.get("file"))),
        ("faces", isinstance(raw.get("faces"), int) and not isinstance(raw.get("faces"), bool)
         and raw.get("faces", -1) >= 0),
        ("persons", isinstance(raw.get("persons"), int) and not isinstance(raw.get("persons"), bool)
         and raw.get("persons", -1) >= 0),
        ("person", raw.get("person") is None or (isinstance(raw.get("person"), str) and bool(raw.get("person")))),
        ("phones", isinstance(raw.get("phones"), int) and not isinstance(raw.get("phones"), bool)
         and raw.get("phones", -1) >= 0),
        ("poor_image", isinstance(raw.get("poor_image"), bool)),
        ("tags", isinstance(raw.get("tags"), list) and all(isinstance(t, str) and t for t in raw.get("tags", []))),
        ("source", isinstance(raw.get("source"), str) and len(raw.get("source", "")) > 10),
        ("licence", isinstance(raw.get("licence"), str) and len(raw.get("licence", "")) > 2),
        ("composite", isinstance(raw.get("composite"), bool)),
        ("derived_from", raw.get("derived_from") is None or isinstance(raw.get("derived_from"), str)),
    ]
    errors = [f"{name}: bad or missing {key!r}" for key, ok in checks if not ok]
    gaze = raw.get("gaze")
    if gaze is not None and not (isinstance(gaze, dict) and set(gaze) == {"yaw", "pitch"}
                                 and all(isinstance(v, int | float) for v in gaze.values())):
        errors.append(f"{name}: gaze must be {{'yaw': deg, 'pitch': deg}}")
    unknown = set(raw) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        errors.append(f"{name}: unknown fields {sorted(unknown)}")
    return errors


def validate(raw_entries: list[dict[str, Any]], data_dir: Path | None = None) -> list[str]:
    """Every problem with the manifest (empty: well-formed): field types, unique names, files present,
    derived_from pointing at an entry (and no cycles), single-subject identities, consistent counts."""
    errors: list[str] = []
    names = [raw.get("file") for raw in raw_entries]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        errors.append(f"duplicate files: {sorted(str(d) for d in duplicates)}")
    by_name = {raw.get("file"): raw for raw in raw_entries}
    for raw in raw_entries:
        type_errors = _type_errors(raw)
        errors += type_errors
        if type_errors:
            continue
        name = raw["file"]
        if data_dir is not None and not (data_dir / name).is_file():
            errors.append(f"{name}: file missing in {data_dir}")
        if raw["person"] is not None and raw["faces"] != 1:
            errors.append(f"{name}: an identity needs a single-subject photo (faces == 1)")
        if raw["persons"] < raw["faces"]:
            errors.append(f"{name}: persons < faces")
        parent = raw["derived_from"]
        if parent is not None and parent not in by_name:
            errors.append(f"{name}: derived_from {parent!r} is not in the manifest")
        if raw.get("photo") is not None and raw["photo"] not in by_name:
            errors.append(f"{name}: photo {raw['photo']!r} is not in the manifest")
        seen = {name}
        while parent is not None and parent in by_name:
            if parent in seen:
                errors.append(f"{name}: derived_from cycle")
                break
            seen.add(parent)
            parent = by_name[parent]["derived_from"]
    return errors


def independence_key(entry: Entry, by_file: dict[str, Entry]) -> str:
    """The photograph an entry shows: follow derived_from to the file as shipped, stopping early at an entry
    that names its own photo (a collage tile). Two entries with one key are not independent samples."""
    current = entry
    seen = {current.file}
    while True:
        if current.photo is not None:
            return current.photo
        parent = current.derived_from
        if parent is None or parent not in by_file or parent in seen:
            return current.file
        seen.add(parent)
        current = by_file[parent]
