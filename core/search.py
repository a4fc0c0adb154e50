"""What a staff search box means: the typed text is found literally, as a substring, in a name.

SQL's LIKE/ILIKE would read `%` and `_` in the text as wildcards (`%` alone matches every row); the pattern built
here escapes them, and every query that uses it says which escape character it means:

    ... WHERE ($2::text IS NULL OR candidate ILIKE $2 ESCAPE '\\' OR exam ILIKE $2 ESCAPE '\\')
"""

from __future__ import annotations

# The LIKE escape character the pattern uses; queries must name it with LIKE_ESCAPE (PostgreSQL's default is the
# same character, other databases have none).
ESCAPE_CHAR = "\\"
LIKE_ESCAPE = "ESCAPE '\\'"


def contains_pattern(text: str) -> str | None:
    """The LIKE pattern matching names that contain `text` as typed, or None for empty text (no filter)."""
    if not text:
        return None
    esc = ESCAPE_CHAR
    escaped = text.replace(esc, esc + esc).replace("%", esc + "%").replace("_", esc + "_")
    return f"%{escaped}%"
