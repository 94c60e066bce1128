"""The feature store at cohort scale: rows read on demand from mapped files, flat memory, pages
shared between jobs, memory and disk modes that give the same models, large bags streamed."""

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from shazam.formats import FeatureFileError
from shazam.mapped import MAPS, FeatureFileRows
from shazam.stores import FeatureStore, standardize_store
from shazam.training import TrainConfig, train_fold
from tests.unit.test_training import make_cohort


def write_cohort(root, n, rows=2000, dim=512, teachers=("ta",), seed=0):
    """``n`` one-slide cases, float16 features, as the extraction writes them."""
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    for i in range(n):
        for t in teachers:
            p = root / "features" / t / f"s{i:03d}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                f["features"] = block + np.float16(i % 7)
                f["coords"] = np.stack([np.arange(rows) * 256, np.zeros(rows, int)], 1)
    return pd.DataFrame({"slide_id": [f"s{i:03d}" for i in range(n)],
                         "case_id": [f"c{i:03d}" for i in range(n)]})  # fmt: skip


@pytest.mark.parametrize("model", ["abmil-ta", "shazam-high"])
def test_memory_and_disk_give_the_same_model(tmp_path, model):
    sheet, spec = make_cohort(tmp_path, n=24)
    cfg = TrainConfig(epochs=4, lr=3e-3, accumulate=4, batch_bags=2, max_patches=16, d_model=16,
                      dropout=0.1)  # fmt: skip
    res = {}
    for cache in ("memory", "disk"):
        out = tmp_path / cache
        logs = []
        m = train_fold(model, spec, tmp_path / "fold.csv", sheet, ["ta", "tb"], out,
                       TrainConfig(**{**cfg.__dict__, "cache": cache}),
                       features_root=tmp_path / "results", log=logs.append)  # fmt: skip
        assert any(f"read from {cache}" in str(x) for x in logs)
        m.pop("seconds")
        hist = pd.read_csv(out / "history.csv").drop(columns=["seconds"])
        res[cache] = (m, hist, pd.read_csv(out / "predictions.csv"))
    (m0, h0, p0), (m1, h1, p1) = res["memory"], res["disk"]
    assert m0["selected_epoch"] == m1["selected_epoch"]
    # the same bytes read either way: the same model, bit for bit
    pd.testing.assert_frame_equal(h0, h1, check_exact=True)
    pd.testing.assert_frame_equal(p0, p1, check_exact=True)
    assert json.dumps(m0["val"], sort_keys=True) == json.dumps(m1["val"], sort_keys=True)


def test_auto_cache_reads_a_small_cohort_into_memory(tmp_path):
    sheet = write_cohort(tmp_path, 3, rows=50, dim=8)
    store = FeatureStore.for_slides(sheet, ["ta"], list(sheet["case_id"]), root=tmp_path)
    assert store.cache_mode == "disk" and store.nbytes() == 3 * 50 * 8 * 2
    assert "read from memory" in store.cache("auto") and store.cache_mode == "memory"
    with pytest.raises(ValueError, match="auto, memory or disk"):
        store.cache("ram")


def test_large_bags_are_streamed_at_evaluation_with_the_same_outputs(tmp_path):
    from shazam.cohorts import build_cohort
    from shazam.models import registry
    from shazam.training import Engine, Targets

    sheet, spec = make_cohort(tmp_path, n=12)
    cases = build_cohort(spec, sheet).cases.set_index("case_id")
    ids = list(cases.index)
    store = FeatureStore.for_slides(sheet, ["ta", "tb"], ids, ("low", "high")[1:],
                                    tmp_path / "results")  # fmt: skip
    outs = {}
    for rows in (4096, 16):  # 16 rows per batch: every bag (20-60 patches) is streamed
        torch.manual_seed(0)
        net = registry.build("shazam-high", store.dims, 2, ["ta", "tb"], 16, 0.0)
        cfg = TrainConfig(epochs=1, batch_bags=1, max_patches=rows, d_model=16, precision="fp32")
        eng = Engine(net, spec, store, Targets(spec, cases), cfg)
        eng.prepare(ids)
        assert bool(eng._eval_batches(ids)[1]) == (rows == 16)
        outs[rows] = eng.predict(ids)
    torch.testing.assert_close(outs[16]["logits"], outs[4096]["logits"], rtol=1e-4, atol=1e-5)
    assert outs[16]["loss"] == pytest.approx(outs[4096]["loss"], rel=1e-4)
    for c in ids:
        torch.testing.assert_close(outs[16]["gate"][c], outs[4096]["gate"][c])


RSS_PROBE = """
import sys
import numpy as np, pandas as pd, torch
from shazam.device import peak_rss
from shazam.stores import FeatureStore, standardize_store
sheet = pd.read_csv(sys.argv[1])
ids = list(sheet["case_id"])
store = FeatureStore.for_slides(sheet, ["ta"], ids, root=sys.argv[2])
standardize_store(store, ids)
rng = np.random.default_rng(0)
plan = [(ids[i : i + 4], store.draw(ids[i : i + 4], 1500, rng)) for i in range(0, len(ids), 4)]
for _ in range(2):  # two epochs of training batches, then whole bags
    for feats, mask in store.batches(plan, dtype=torch.bfloat16):
        assert feats["ta:high"].shape[0] == mask.sum()
for feats, mask in store.batches([(ids[i : i + 4], [None] * 4) for i in range(0, len(ids), 4)]):
    pass
print(peak_rss())  # VmHWM: ru_maxrss would carry the pytest process's peak
"""


def test_a_stores_memory_does_not_grow_with_the_cohort(tmp_path):
    peaks, sizes = {}, {}
    for n in (8, 32):
        root = tmp_path / f"n{n}"
        write_cohort(root, n).to_csv(root / "sheet.csv", index=False)
        sizes[n] = sum(p.stat().st_size for p in (root / "features").rglob("*.h5"))
        p = subprocess.run([sys.executable, "-c", RSS_PROBE, str(root / "sheet.csv"), str(root)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        peaks[n] = int(p.stdout.split()[-1])
    # 24 more cases are 49 MB more features; the store's peak may not follow them (the old
    # in-memory store grew by the whole difference)
    assert sizes[32] - sizes[8] > 45e6
    assert peaks[32] - peaks[8] < 0.2 * (sizes[32] - sizes[8]), (peaks, sizes)


SHARE_PROBE = """
import sys, time
import numpy as np
from shazam.mapped import FeatureFileRows
src = FeatureFileRows(sys.argv[1], {"high": "features"})
assert float(src.take("high", slice(0, src.n)).astype(np.float32).sum()) != 0
print("ready", flush=True)
sys.stdin.readline()
"""


def mapping_kb(path) -> dict[str, int]:
    """This process's smaps fields (kB) summed over its mappings of ``path``."""
    out, inside = {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.rstrip().endswith(" kB"):
                name, value = line.split()[:2]
                out[name[:-1]] = out.get(name[:-1], 0) + int(value)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_two_processes_reading_one_file_share_its_pages(tmp_path):
    write_cohort(tmp_path, 1, rows=4000, dim=1024)
    path = (tmp_path / "features/ta/s000.h5").resolve()
    other = subprocess.Popen([sys.executable, "-c", SHARE_PROBE, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "ready"
        src = FeatureFileRows(path, {"high": "features"})
        rows = src.take("high", slice(0, src.n))
        kb = mapping_kb(path)
        data_kb = rows.nbytes // 1024
        # both processes map the file's pages: one copy in the page cache, shared (dirty while
        # the freshly written file is not yet flushed), each process charged half (Pss)
        assert kb["Shared_Clean"] + kb["Shared_Dirty"] >= 0.95 * data_kb, kb
        assert kb["Pss"] <= 0.55 * kb["Rss"], kb
        assert kb.get("Private_Dirty", 0) == 0 and kb.get("Anonymous", 0) == 0
        src.release()  # the job's RSS stops counting them; the page cache keeps them
        assert mapping_kb(path)["Rss"] < 0.05 * data_kb
        assert np.array_equal(src.take("high", slice(0, src.n)), rows)
    finally:
        other.communicate("\n", timeout=30)
        MAPS.close(str(path))


def test_files_other_tools_write_chunked_and_compressed_are_read_through_h5py(tmp_path):
    sheet = write_cohort(tmp_path, 2, rows=300, dim=24)
    plain = FeatureStore.for_slides(sheet, ["ta"], ["c000", "c001"], root=tmp_path)
    want, _ = plain.batch(["c000", "c001"], max_patches=50, rng=np.random.default_rng(1))
    path = tmp_path / "features/ta/s001.h5"
    with h5py.File(path, "r+") as f:
        x = f["features"][:]
        del f["features"]
        f.create_dataset("features", data=x, chunks=(64, 24), compression="gzip")
    store = FeatureStore.for_slides(sheet, ["ta"], ["c000", "c001"], root=tmp_path)
    assert store.sources[1].levels["high"].offset is None  # not mappable: h5py reads it
    got, _ = store.batch(["c000", "c001"], max_patches=50, rng=np.random.default_rng(1))
    assert torch.equal(got["ta:high"], want["ta:high"])


def test_bad_feature_files_name_the_file_and_the_fix(tmp_path):
    sheet = write_cohort(tmp_path, 2, rows=100, dim=16)
    ids = ["c000", "c001"]
    path = tmp_path / "features/ta/s001.h5"
    with h5py.File(path, "r+") as f:
        x = f["features"][:]
        del f["features"]
        f["features"] = np.zeros((100, 20), np.float16)
    with pytest.raises(FeatureFileError, match=r"s001.h5: its high features are 20 wide.*16 wide"):
        FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path)
    with h5py.File(path, "r+") as f:
        del f["features"]
        f["features"] = x[:90]
    with pytest.raises(FeatureFileError, match="do not match its 100 rows.*snakemake --forcerun"):
        FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path)
    with pytest.raises(FeatureFileError, match="no `features_mid` dataset"):
        FeatureStore.for_slides(sheet, ["ta"], ids, ("mid",), root=tmp_path)
    # the bytes of a dataset cut off at the end of the file
    with h5py.File(path, "w") as f:
        f["coords"] = np.zeros((100, 2), np.int64)
        f["features"] = x
        end = f["features"].id.get_offset() + x.nbytes
    with open(path, "r+b") as f:
        f.truncate(end - 1000)
    with pytest.raises(FeatureFileError, match="truncated"):
        FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path)


def test_tile_items_are_rows_of_one_file_read_in_one_piece(tmp_path):
    from shazam.formats import write_tile_features

    ids = [f"i{i}" for i in range(10)]
    images = pd.DataFrame({"image_id": ids, "case_id": [i[:2] for i in ids], "y": [0, 1] * 5})
    x = np.arange(10 * 6, dtype=np.float16).reshape(10, 6)
    write_tile_features(tmp_path / "a.h5", images, {"high": x}, np.zeros((10, 2)), np.ones(10), {})
    store, rows = FeatureStore.for_tiles({"a": tmp_path / "a.h5"})
    assert list(rows["image_id"]) == list(images["image_id"])
    assert len(store._segments(["i7", "i2", "i3"], [None] * 3, 0)) == 1
    feats, mask = store.batch(["i7", "i2", "i3"])
    assert torch.equal(feats["a:high"], torch.from_numpy(x[[7, 2, 3]]).float())
    assert mask.shape == (3, 1)
    standardize_store(store, [f"i{i}" for i in range(8)])
    mean, sd = store.standardizer.stats["a:high"]
    torch.testing.assert_close(
        store.batch(["i9"])[0]["a:high"][0], (torch.tensor(x[9]).float() - mean) / sd
    )


def test_teachers_with_different_patches_keep_the_common_ones(tmp_path):
    for t, keep in (("ta", slice(None)), ("tb", slice(2, None))):
        p = tmp_path / f"features/{t}/s0.h5"
        p.parent.mkdir(parents=True)
        coords = np.stack([np.arange(6) * 256, np.zeros(6, int)], 1)[keep]
        with h5py.File(p, "w") as f:
            f["coords"] = coords[::-1] if t == "tb" else coords
            f["features"] = (coords[::-1] if t == "tb" else coords)[:, :1].astype(np.float16)
    sheet = pd.DataFrame({"slide_id": ["s0"], "case_id": ["c0"]})
    store = FeatureStore.for_slides(sheet, ["ta", "tb"], ["c0"], root=tmp_path)
    feats, _ = store.batch(["c0"])
    assert store.size("c0") == 4
    assert torch.equal(feats["ta:high"], feats["tb:high"])
    assert feats["ta:high"][:, 0].tolist() == [512, 768, 1024, 1280]


def prepared_stores(tmp_path, train=2):
    """(ids, a store read from disk, one held in memory) over 3 cases of 700 rows, both
    standardised on the first ``train`` cases and prepared for bf16."""
    sheet = write_cohort(tmp_path, 3, rows=700, dim=24)
    ids = list(sheet["case_id"])
    disk = FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path)
    mem = FeatureStore.for_slides(sheet, ["ta"], ids, root=tmp_path)
    mem.cache("memory")
    for st in (disk, mem):
        standardize_store(st, ids[:train])
        st.prepare(torch.bfloat16)
    return ids, disk, mem


def test_a_store_in_memory_is_transformed_once_into_the_same_values(tmp_path):
    ids, disk, mem = prepared_stores(tmp_path)
    assert mem._ready and not disk._ready  # a store read from disk transforms batch by batch
    assert all(lv.data is None for s in mem.sources for lv in s.levels.values())  # no 2nd copy
    for picks in (None, 300):
        a, _ = disk.batch(ids, picks, np.random.default_rng(0), dtype=torch.bfloat16)
        b, _ = mem.batch(ids, picks, np.random.default_rng(0), dtype=torch.bfloat16)
        assert torch.equal(a["ta:high"], b["ta:high"])
    with pytest.raises(ValueError, match="prepared for torch.bfloat16"):
        mem.batch(ids, dtype=torch.float32)


def test_the_accelerator_path_runs_on_the_meta_device(tmp_path):
    """No GPU in CI: the meta device takes the same path (float16 rows gathered on the host,
    copied over, standardised there), which checks its shapes, dtypes and buffers."""
    ids, disk, mem = prepared_stores(tmp_path, train=3)
    for st in (disk, mem):
        plan = [(ids, st.draw(ids, 100, np.random.default_rng(0))), (ids[:1], [None])]
        got = [(b["ta:high"], m) for b, m in st.batches(plan, "meta", torch.bfloat16)]
        assert [x.shape for x, _ in got] == [(300, 24), (700, 24)]
        assert all(x.dtype == torch.bfloat16 and x.is_meta and m.is_meta for x, m in got)
