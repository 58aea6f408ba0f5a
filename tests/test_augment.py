"""Diffusion augmentation on a real local Ray with the tiny SD checkpoint and the sample Artpedia
corpus: train-only output with full provenance, byte-identical reruns, resume after a killed job,
a crashed actor and a batch committed in part, a corrupt source, mixed image sizes, the CLIP
filter, and S3 in and out."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from artray import corpus, storage
from artray.config import ConfigError, load_config
from artray.schema import ARTWORK_SCHEMA, VARIANT_SCHEMA
from artray.outputs import VARIANTS
from artray.stages.augment import AugmentConfig, AugmentError, run_augment
from artray.stages.augment_generate import export_name
from artray.stages.augment_plan import (
    make_plan,
    read_train,
    target_size,
    variant_id,
    variant_seed,
)
from artray.storage import StorageOptions

M = 2
SMALL = {"variants": M, "steps": 4, "long_side": 64, "batch_size": 4, "shard_rows": 6}
LONG = "{caption} " + " ".join(["an oil painting in a quiet museum gallery"] * 12)  # over 77 CLIP tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def artpedia(tmp_path_factory) -> str:
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    root = tmp_path_factory.mktemp("augment-corpus")
    src = make_samples(str(root / "samples"), n=20)["artpedia"]
    import_corpus(ImportConfig(format="artpedia", src=src, dest=str(root / "artpedia")))
    return str(root / "artpedia")


LOCAL = StorageOptions()
ROOT = Path(__file__).resolve().parents[1]


def _doctored_corpus(src: str, dest: str, options: StorageOptions = LOCAL) -> dict[str, str]:
    """A copy of corpus `src` at `dest` with one train image truncated and two made non-square."""
    arts = corpus.read_artworks(src).sort_by("artwork_id").to_pylist()
    train = [a for a in arts if a["split"] == "train"]
    roles = {"corrupt": train[0]["artwork_id"], "wide": train[1]["artwork_id"], "tall": train[2]["artwork_id"]}
    train[0]["image"] = train[0]["image"][: len(train[0]["image"]) // 3]
    for a, size in ((train[1], (120, 60)), (train[2], (60, 120))):
        buf = io.BytesIO()
        Image.open(io.BytesIO(a["image"])).convert("RGB").resize(size).save(buf, "PNG")
        a["image"], (a["width"], a["height"]) = buf.getvalue(), size
    storage.write_parquet_atomic(pa.Table.from_pylist(arts, schema=ARTWORK_SCHEMA),
                                 storage.join(dest, "artworks", "part-00000.parquet"), options)
    corpus.write_manifest(dest, {"stage": "import"}, options)
    return roles


@pytest.fixture(scope="module")
def doctored(artpedia, tmp_path_factory) -> tuple[str, dict[str, str]]:
    """The sample corpus with a corrupt image, a landscape and a portrait among its train artworks."""
    uri = str(tmp_path_factory.mktemp("augment-doctored") / "corpus")
    return uri, _doctored_corpus(artpedia, uri)


@pytest.fixture(scope="module")
def reference(ray_local, tiny, doctored, tmp_path_factory) -> tuple[str, dict]:
    """One uninterrupted run (filter on, long prompts, files exported): what other runs must reproduce."""
    out = str(tmp_path_factory.mktemp("augment-ref") / "variants")
    manifest = run_augment(_cfg(tiny, doctored[0], out, export_images=True))
    return out, manifest


def _cfg(tiny, inp, out, **kw) -> AugmentConfig:
    return AugmentConfig(**{"input": inp, "output": out, "model": tiny["sd-img2img"], **SMALL,
                            "filter_model": tiny["clip-77"], "filter_threshold": 0.5, "prompt_template": LONG, **kw})


def _variants(out, options=LOCAL) -> pa.Table:
    table = corpus.read_table(storage.join(out, VARIANTS), VARIANT_SCHEMA, options)
    assert not corpus.has_duplicates(table, "variant_id"), "a variant_id was committed twice"
    return table.sort_by("variant_id")


def _images(out, options=LOCAL) -> dict[str, bytes]:
    t = _variants(out, options)
    return dict(zip(t["variant_id"].to_pylist(), t["image"].to_pylist()))


def _train_ids(inp) -> set[str]:
    arts = corpus.read_artworks(inp, columns=["artwork_id", "split"]).to_pylist()
    return {a["artwork_id"] for a in arts if a["split"] == "train"}


def test_config_plan_and_seeds_without_ray(artpedia):
    assert target_size(120, 120, 576) == (576, 576)
    assert target_size(1000, 750, 576) == (576, 432)
    assert target_size(750, 1001, 576) == (432, 576)
    assert target_size(3000, 20, 576) == (576, 8)
    assert variant_seed(0, "42", 1) == variant_seed(0, "42", 1) != variant_seed(1, "42", 1)
    assert variant_seed(0, "42", 1) == 2818028696329968747  # stable across processes and machines
    with pytest.raises(ValueError, match="caption"):
        AugmentConfig(input="a", output="b", prompt_template="a painting")
    with pytest.raises(ValueError, match="no denoising step"):
        AugmentConfig(input="a", output="b", steps=2)
    with pytest.raises(ConfigError, match="variants"):
        load_config(AugmentConfig, overrides={"input": "a", "output": "b", "variants": 0})
    cfg = AugmentConfig(input=artpedia, output="unused", **SMALL)
    assert (cfg.strength, cfg.guidance, cfg.sampler) == (0.34, 10.0, "euler_a")
    assert AugmentConfig(input="a", output="b").steps == 40 and AugmentConfig(input="a", output="b").long_side == 576

    train, splits = read_train(artpedia, StorageOptions())
    assert set(train["split"].to_pylist()) == {"train"} and train.num_rows == splits["train"] == 14
    assert splits["val"] and splits["test"]
    full, fails, counts = make_plan(train, cfg, set(), {}, StorageOptions())
    assert not fails and counts["to_generate"] == 14 * M and len(full) == 7
    # The plan never depends on what is done: a resume runs the same batches, whole.
    done = {v for b in full[:3] for v in b["variant_ids"][0].as_py()} | {full[4]["variant_ids"][0][0].as_py()}
    rest, _, counts = make_plan(train, cfg, done, {}, StorageOptions())
    assert [b["batch_id"][0].as_py() for b in rest] == [b["batch_id"][0].as_py() for b in full[3:]]
    assert rest[1]["variant_ids"].equals(full[4]["variant_ids"]) and rest[1]["emit"][0].as_py()[0] is False
    assert counts["to_generate"] == 14 * M - len(done) and counts["regenerated_for_batch"] == 1


def test_train_only_provenance_corrupt_source_sizes_filter_and_rerun(reference, tiny, doctored, capsys):
    (out, manifest), (inp, roles) = reference, doctored
    table = _variants(out)
    train = _train_ids(inp)
    assert set(table["parent_id"].to_pylist()) == train - {roles["corrupt"]}  # no val/test parent ids
    assert table.num_rows == (len(train) - 1) * M == manifest["counts"]["output_variants"]
    failures = corpus.read_failures(out).to_pylist()  # the corrupt image is a failure row, the rest is augmented
    assert [(f["key"], f["reason"], f["retryable"]) for f in failures] == [(roles["corrupt"], "undecodable_image", False)]
    captions = {a["artwork_id"]: a["captions"] for a in corpus.read_artworks(inp).to_pylist()}
    rows = table.drop(["image"]).to_pylist()
    for row in rows:
        assert row["variant_id"] == variant_id(row["parent_id"], row["variant"])
        assert row["seed"] == variant_seed(0, row["parent_id"], row["variant"])
        assert row["prompt"] == LONG.format(caption=captions[row["parent_id"]][0]) and row["prompt_truncated"]
        assert (row["split"], row["model"], row["sampler"], row["steps"]) == ("train", tiny["sd-img2img"], "euler_a", 4)
        assert abs(row["strength"] - 0.34) < 1e-6 and row["guidance"] == 10.0
        assert -1.0 <= row["similarity"] <= 1.0 and row["passed_filter"] == (row["similarity"] >= 0.5)
    sizes = {r["parent_id"]: (r["width"], r["height"]) for r in rows}
    assert sizes.pop(roles["wide"]) == (64, 32) and sizes.pop(roles["tall"]) == (32, 64)
    assert set(sizes.values()) == {(64, 64)}
    wide = table.filter(pc.equal(table["parent_id"], roles["wide"]))["image"][0].as_py()
    assert wide.startswith(b"\x89PNG") and Image.open(io.BytesIO(wide)).size == (64, 32)
    assert storage.read_bytes(storage.join(out, "images", export_name(roles["wide"], 0, "png"))) == wide
    assert len(storage.list_files(storage.join(out, "images"))) == table.num_rows
    # What the trainer reads (alpha mixing): the variants of each parent in order, failed-filter ones left out.
    from artray.train.config import TrainConfig
    from artray.train.data import build_train_table

    for only_passed in (True, False):
        tcfg = TrainConfig(model="m.pt", corpus=inp, output="o", variants=out, alpha=0.5, only_passed_filter=only_passed)
        got = {r["artwork_id"]: r["variants"] for r in build_train_table(tcfg).to_pylist()}
        want: dict[str, list[bytes]] = {}
        for r in table.to_pylist():  # sorted by variant_id = (parent, variant) here
            if r["passed_filter"] or not only_passed:
                want.setdefault(r["parent_id"], []).append(r["image"])
        assert {k: v for k, v in got.items() if v} == want
    c = manifest["counts"]
    assert c["prompts_truncated"] == len(train) - 1 and c["passed_filter"] + c["filtered_out"] == table.num_rows
    assert c["artworks_augmented"] == len(train) - 1 and c["failures_total"] == {"undecodable_image": 1}
    assert corpus.read_manifest(out)["stage"] == "augment"

    again = run_augment(_cfg(tiny, inp, out, export_images=True))  # same config: nothing to do
    assert again["counts"]["generated"] == 0 and again["counts"]["done"] == table.num_rows
    assert again["counts"]["skipped_failed"] == M  # the corrupt artwork is not retried
    assert _variants(out).equals(table) and len(corpus.read_failures(out)) == 1
    assert sum(again["counts"]["failed_this_run"].values()) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"[augment] {out}: {len(train)} train artworks x {M}; generated 0, failed 0") and "images/s" in line

    with pytest.raises(AugmentError, match="other settings"):
        run_augment(_cfg(tiny, inp, out, strength=0.5))
    with pytest.raises(AugmentError, match="does not exist"):  # refused before any actor starts
        run_augment(_cfg(tiny, inp, out + "-other", model=out + "/no-such-model"))


def _kill_after_first_commit(cmd: list[str], out: str, log: Path) -> None:
    """Start the job `cmd`, SIGKILL it as soon as its first variant shard is committed."""
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while not storage.list_files(storage.join(out, VARIANTS), ".parquet"):
            assert proc.poll() is None, f"the job ended before its first commit:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "the job committed nothing in 240 s"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the driver
        proc.wait(30)


def _drop_one_row(out: str) -> str:
    """Rewrite one committed shard without its first row (a batch committed in part); returns that variant_id."""
    shard = next(s for s in storage.list_files(storage.join(out, VARIANTS), ".parquet")
                 if storage.read_parquet(s, columns=["variant_id"]).num_rows > 1)
    table = storage.read_parquet(shard)
    storage.write_parquet_atomic(table.slice(1), shard)
    return table["variant_id"][0].as_py()


def test_killed_job_crashed_actor_and_partial_batch_resume_exactly(ray_local, reference, tiny, doctored, tmp_path):
    """`jobs/augment.py` SIGKILLed after its first commit, then a run whose actor crashes mid-way, then a batch
    committed in part: the next run generates exactly the missing pairs, byte-identical to an uninterrupted run."""
    (ref_out, ref_manifest), inp = reference, doctored[0]
    total = ref_manifest["counts"]["output_variants"]
    out = str(tmp_path / "variants")
    config = tmp_path / "augment.yaml"
    config.write_text(_cfg(tiny, inp, out).to_yaml())
    address = ray_local.get_runtime_context().gcs_address  # the job joins this cluster, as `ray job submit` would
    _kill_after_first_commit([sys.executable, "jobs/augment.py", "--config", str(config), "--address", address],
                             out, tmp_path / "job.log")
    deadline = time.time() + 60  # the dead job's actor and tasks are gone once their CPUs are free again
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the killed job's workers still hold CPUs after 60 s"
        time.sleep(0.2)
    assert corpus.read_manifest(out) is None  # unfinished: no manifest
    assert 0 < _variants(out).num_rows < total

    with pytest.raises(AugmentError, match="fail_after_batches"):
        run_augment(_cfg(tiny, inp, out, fail_after_batches=1))  # the actor raises on its second batch
    assert corpus.read_manifest(out) is None
    _drop_one_row(out)
    missing = total - _variants(out).num_rows
    assert missing > 0

    resumed = run_augment(load_config(AugmentConfig, str(config)))
    c = resumed["counts"]
    assert c["generated"] == missing and c["done"] == total - missing and c["regenerated_for_batch"] >= 1
    assert c["output_variants"] == total and c["duplicate_variants"] == 0
    assert _images(out) == _images(ref_out)  # no missing, no duplicate, the same bytes
    assert [f["key"] for f in corpus.read_failures(out).to_pylist()] == [doctored[1]["corrupt"]]


def test_s3_in_and_out_and_a_fresh_run_is_byte_identical(ray_local, tiny, artpedia, reference, s3_endpoint,
                                                          s3_bucket):
    opts = StorageOptions(endpoint_url=s3_endpoint)
    inp, out = f"{s3_bucket}/corpora/doctored", f"{s3_bucket}/augmented/doctored"
    _doctored_corpus(artpedia, inp, opts)
    # the GPU layout (prepare tasks → Generate actors → encode tasks) on CPU; the reference ran inline
    manifest = run_augment(_cfg(tiny, inp, out, s3_endpoint=s3_endpoint, export_images=True, inline_cpu_steps=False))
    assert manifest["counts"]["generated"] == reference[1]["counts"]["output_variants"]
    assert corpus.read_manifest(out, opts)["stage"] == "augment" and len(corpus.read_failures(out, opts)) == 1
    assert _images(out, opts) == _images(reference[0])  # a fresh run, either layout: byte-identical images
    assert len(storage.list_files(f"{out}/images", options=opts)) == manifest["counts"]["output_variants"]


def test_seed_a_preset_chunked_prompts_per_variant_seeds_resume_exactly(ray_local, tiny, artpedia, tmp_path):
    """The cioni2023 preset: long prompts in chunks (none counted as cut), variant k of every artwork seeded
    with k; a batch committed in part is regenerated byte-identically; other encodings or seeds are refused."""
    out = str(tmp_path / "variants")
    cfg = _cfg(tiny, artpedia, out, preset="cioni2023", filter_model=None, inline_cpu_steps=False)
    assert (cfg.prompt_encoding, cfg.seed_mode, cfg.steps) == ("chunked", "per_variant", 4)  # given keys win
    first = run_augment(cfg)
    table = _variants(out)
    assert table.num_rows == len(_train_ids(artpedia)) * M and first["counts"]["prompts_truncated"] == 0
    rows = table.drop(["image"]).to_pylist()
    assert all(r["seed"] == r["variant"] and not r["prompt_truncated"] for r in rows)
    ref = _images(out)
    dropped = _drop_one_row(out)
    resumed = run_augment(cfg.model_copy())
    assert resumed["counts"]["generated"] == 1 and resumed["counts"]["regenerated_for_batch"] >= 1
    assert _images(out) == ref and dropped in ref
    for other in ({"prompt_encoding": "truncate"}, {"seed_mode": "per_row"}, {"negative_prompt": "blurry"}):
        with pytest.raises(AugmentError, match="other settings"):
            run_augment(_cfg(tiny, artpedia, out, preset="cioni2023", filter_model=None, **other))
    with pytest.raises(AugmentError, match="compile: true needs GPU"):  # refused before anything is written
        run_augment(_cfg(tiny, artpedia, str(tmp_path / "compiled"), compile=True))
    assert not (tmp_path / "compiled").exists()
