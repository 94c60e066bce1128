"""One slide file listed twice in the slide sheet (:func:`shazam.slides.load_sheet`).

Under two case ids the slide would sit on both sides of a fold (a leak no split check can see:
the splits only know cases); under one case its patches would enter the case's bag twice. The
same file is found by real path (symlinks and ``..`` resolved), a copy under another path by
content, cheaply: every file is stat'ed once (the sheet's existence check), and only files of
exactly equal size are resolved and read, 3 MiB at most each (:func:`file_fingerprint`).
"""

from __future__ import annotations

import hashlib
import os

# the content fingerprint of files of equal size: their size and this many bytes at the start,
# the middle and the end (a whole slide is never read while the workflow parses)
FINGERPRINT_CHUNK = 1 << 20


def file_fingerprint(path: str, size: int) -> str:
    """sha256 of the size and the first, middle and last :data:`FINGERPRINT_CHUNK` bytes (the
    whole file when it is no longer than three of them)."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 3 * FINGERPRINT_CHUNK:
            h.update(f.read())
        else:
            for at in (0, (size - FINGERPRINT_CHUNK) // 2, size - FINGERPRINT_CHUNK):
                f.seek(at)
                h.update(f.read(FINGERPRINT_CHUNK))
    return h.hexdigest()


def listed_twice(sids, cases, paths, stats, checked: bool, where) -> list[str]:
    """One error per sheet line whose slide file an earlier line already lists, in line order.
    ``paths``: the rows' normalised paths (empty: none); ``stats``: their ``os.stat`` results
    (None: missing, already reported); ``checked``: whether the files were stat'ed at all (if
    not, only real paths are compared); ``where(i, column)``: row ``i``'s place in the sheet.

    The same file under two paths (a symlink, ``a/../a``) has one size, so only files of
    colliding sizes have their real paths resolved and, when those differ, their fingerprints
    computed: a sheet of distinct slides costs one ``stat`` per row."""
    groups: dict[int, list[int]] = {}  # size (0 when not checked) -> lines
    for i, st in enumerate(stats):
        if paths[i] and (st is not None or not checked):
            groups.setdefault(st.st_size if checked else 0, []).append(i)
    found: list[tuple[int, str]] = []
    for size, lines in groups.items():
        if len(lines) < 2:
            continue
        first: dict[str, int] = {}  # real path -> its first line
        prints: dict[str, int] = {}  # fingerprint -> its first line
        for i in lines:
            real = os.path.realpath(paths[i])
            j = first.setdefault(real, i)
            if j != i:
                found.append((i, _same_file(i, j, sids, cases, paths, real, where)))
            elif checked and size > 0:  # empty files fail tiling on their own
                j = prints.setdefault(file_fingerprint(real, size), i)
                if j != i:
                    found.append((i, _same_content(i, j, sids, cases, paths, where)))
    return [msg for _, msg in sorted(found, key=lambda f: f[0])]


def _same_file(i: int, j: int, sids, cases, paths, real: str, where) -> str:
    shown = paths[i] if paths[i] == paths[j] else f"{paths[i]} and {paths[j]} are both {real}"
    if cases[i] != cases[j]:
        return (
            f"{where(i, 'path')}: slide '{sids[i]}' of case '{cases[i]}' is the same file as "
            f"slide '{sids[j]}' of case '{cases[j]}' on line {j + 2} ({shown}): one slide "
            "under two case ids would sit on both sides of a fold; keep only the line of the "
            "case it belongs to"
        )
    return (
        f"{where(i, 'path')}: slide '{sids[i]}' is the same file as slide '{sids[j]}' on line "
        f"{j + 2} ({shown}), both of case '{cases[i]}': its patches would enter the case's "
        "bag twice; remove one of the two lines"
    )


def _same_content(i: int, j: int, sids, cases, paths, where) -> str:
    copy = (
        f"{where(i, 'path')}: slide '{sids[i]}' ({paths[i]}) has the same content as slide "
        f"'{sids[j]}' on line {j + 2} ({paths[j]}) (same size and same first, middle and last "
        "MiB)"
    )
    if cases[i] != cases[j]:
        return (
            f"{copy}, but their case ids differ ('{cases[i]}' here, '{cases[j]}' on line "
            f"{j + 2}): a copy of one slide under two case ids would sit on both sides of a "
            "fold; keep only the line of the case it belongs to"
        )
    return (
        f"{copy}, both of case '{cases[i]}': a copy within one case would put the slide's "
        "patches twice in its bag; remove one of the two lines"
    )
