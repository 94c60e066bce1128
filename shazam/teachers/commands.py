"""The ``shazam teachers`` subcommands (``list``, ``check``): the registry's teachers, and a
check that one builds and gives the widths the registry records. Registered by
:mod:`shazam.cli`; nothing here imports torch until a command runs."""

from __future__ import annotations

import argparse


def cmd_teachers_list(a: argparse.Namespace) -> None:
    from . import REGISTRY

    rows = [("name", "low", "mid", "high", "input", "weights", "description")]
    for spec in REGISTRY.values():
        d = spec.dims
        rows.append(
            (spec.name, str(d.get("low", "-")), str(d.get("mid", "-")), str(d.get("high", "-")),
             str(spec.input_size), spec.weight_source, spec.description)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def cmd_teachers_check(a: argparse.Namespace) -> None:
    from . import get_spec
    from .build import LevelExtractor, build_model, check

    spec = get_spec(a.name)
    if a.random_weights:
        shapes = check(spec, batch=a.batch)
        source = "random weights (architecture check, nothing downloaded)"
    else:
        import torch

        model, w = build_model(spec, a.weights)
        with torch.inference_mode():
            out = LevelExtractor(spec, model)(
                torch.randn(a.batch, 3, spec.input_size, spec.input_size)
            )
        shapes = {lv: list(t.shape) for lv, t in out.items()}
        source = w.identity
    print(f"{spec.name} ({spec.arch}, {source})")
    ok = True
    for lv, shape in shapes.items():
        expected = spec.dims[lv]
        flag = "ok" if shape[-1] == expected else f"MISMATCH (registry says {expected})"
        ok &= shape[-1] == expected
        print(f"  {lv:5s} {shape[-1]:6d}  {flag}")
    if not ok:
        raise ValueError(f"teacher {spec.name}: dims differ from the registry")


def add_teachers(sub) -> None:
    tc = sub.add_parser("teachers", help="the teacher registry")
    tsub = tc.add_subparsers(dest="teachers_command", required=True)
    tl = tsub.add_parser("list", help="name, dims per level, input size, weight source")
    tl.set_defaults(func=cmd_teachers_list)
    tk = tsub.add_parser("check", help="build a teacher, run one batch, print every level's dims")
    tk.add_argument("name")
    tk.add_argument(
        "--random-weights", action="store_true", help="real architecture, random weights, offline"
    )
    tk.add_argument("--weights", default=None, help="local weight file or folder")
    tk.add_argument("--batch", type=int, default=2)
    tk.set_defaults(func=cmd_teachers_check)
