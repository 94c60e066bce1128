"""Which slides share one extraction job (``extraction.slides_per_job``), stably.

A job loads its teacher once and extracts a group of slides. Groups are cut by content, as
backup tools cut files into chunks, so that editing the sheet disturbs as little as possible:

- every slide gets a hash of its id; slides sit on a ring in hash order;
- a slide whose hash is 0 modulo ``per_job`` is a *boundary*: a group is the arc of the ring
  that ends at a boundary slide, and is named after it;
- an arc longer than ``2 × per_job`` is cut again the same way with fresh bits of the hash
  (twice at most), then into equal chunks of about ``per_job``. Groups hold about
  0.75 × ``per_job`` slides on average, never more than twice it.

A slide's group therefore depends only on its neighbours on the ring. Adding or removing a
slide changes the membership of the group it falls into (a new boundary slide splits that group
in two) and leaves the other groups, and their names, as they were; only when it lands in a
long arc that is cut again can a few neighbouring groups of that arc change too (over 100 edits
of a 1,200-slide sheet at per_job 8: 1.06 groups on average, 6 at most). Sheet order, other
slides' names and the sheet's size do not matter. With ``per_job: 1`` every slide is its own group.

No torch here: the workflow imports this at parse time.
"""

from __future__ import annotations

import hashlib
import math

GROUP_PREFIX = "g"
NAME_HEX = 12  # 48 bits of the boundary slide's hash: no clash among millions of slides


def _hash(slide_id: str) -> bytes:
    return hashlib.sha256(slide_id.encode()).digest()


def _cut(ring: list[str], h: dict, per_job: int, level: int) -> list[list[str]]:
    """Cut ``ring`` after each slide whose level-``level`` hash bits are 0 mod ``per_job``.
    At level 0 the list is a ring: the tail after the last boundary joins the first arc."""
    bits = slice(8 + 8 * level, 16 + 8 * level)
    arcs, cur = [], []
    for s in ring:
        cur.append(s)
        if int.from_bytes(h[s][bits], "big") % per_job == 0:
            arcs.append(cur)
            cur = []
    if cur and arcs and level == 0:
        arcs[0] = cur + arcs[0]
    elif cur:
        arcs.append(cur)
    return arcs


def _arcs(ring: list[str], h: dict, per_job: int, level: int = 0) -> list[list[str]]:
    """Arcs of at most ``2 × per_job`` slides: an arc that is still longer is cut again with
    the next level's hash bits (an independent draw), and after the last level into equal
    chunks."""
    if level > 0 and len(ring) <= 2 * per_job:
        return [ring]
    if level == 3:  # sha256 has three more 8-byte windows after the ordering prefix
        n = math.ceil(len(ring) / per_job)
        return [ring[k * len(ring) // n : (k + 1) * len(ring) // n] for k in range(n)]
    return [
        sub for arc in _cut(ring, h, per_job, level) for sub in _arcs(arc, h, per_job, level + 1)
    ]


def slide_groups(slide_ids, per_job: int) -> dict[str, tuple[str, ...]]:
    """``{group name: slide ids}``, every slide in exactly one group, groups in ring order."""
    if per_job < 1:
        raise ValueError(f"extraction.slides_per_job must be at least 1 (got {per_job})")
    ids = list(dict.fromkeys(slide_ids))
    if not ids:
        return {}
    h = {s: _hash(s) for s in ids}
    ring = sorted(ids, key=h.__getitem__)
    return {
        GROUP_PREFIX + h[arc[-1]].hex()[:NAME_HEX]: tuple(arc) for arc in _arcs(ring, h, per_job, 0)
    }


def group_of(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``{slide id: group name}``."""
    return {s: g for g, members in groups.items() for s in members}


# --------------------------------------------------------------------------- group tables

# one row per slide of a job: what `shazam extract` did with it
TABLE_COLUMNS = (
    "teacher", "group", "slide_id", "status", "reason", "n_patches", "n_skipped_patches",
    "seconds", "patches_per_s", "device", "reused",
)  # fmt: skip


def write_group_table(rows: list[dict], path, group: str = "") -> None:
    """The job's table (``results/features/{teacher}/groups/{group}.tsv``), atomically."""
    import pandas as pd

    from ..io import atomic_path

    df = pd.DataFrame([{**r, "group": group} for r in rows], columns=list(TABLE_COLUMNS))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def summarize_group_tables(paths, out):
    """Every job's table as one cohort table (``results/qc/extraction.tsv``), ordered by
    teacher and slide; skipped slides show their reason."""
    import pandas as pd

    from ..io import atomic_path

    frames = [
        pd.read_csv(p, sep="\t", dtype={"slide_id": str}, keep_default_na=False) for p in paths
    ]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TABLE_COLUMNS)
    df = df.sort_values(["teacher", "slide_id"], kind="stable").reset_index(drop=True)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return df
