"""Typed configs (YAML + --set + flags, errors naming the key) and URI storage (atomic
writes, listing that never shows temp files, S3 errors that name the URI)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from artray import storage
from artray.cli import build_parser
from artray.config import ConfigError, config_from_args, load_config, parse_overrides
from artray.corpora.importer import ImportConfig
from artray.stages.ingest import IngestConfig


def test_yaml_then_set_then_flags(tmp_path):
    path = tmp_path / "imp.yaml"
    path.write_text("format: artcap\nsrc: raw\ndest: out\nsplit_seed: 1\nsplit_ratios: [0.5, 0.25, 0.25]\n")
    args = build_parser().parse_args(
        ["corpus", "import", "--config", str(path), "--set", "split_seed=2", "--max-caption-chars", "99"])
    cfg = config_from_args(ImportConfig, args, {"format": args.format, "src": args.src, "dest": args.dest})
    assert (cfg.format, cfg.src, cfg.dest) == ("artcap", "raw", "out")
    assert cfg.split_seed == 2 and cfg.max_caption_chars == 99 and cfg.split_ratios == (0.5, 0.25, 0.25)


def test_stage_configs_share_one_name_per_concept_and_read_the_old_ones(tmp_path, caplog):
    from artray.stages.augment import AugmentConfig
    from artray.stages.caption import CaptionConfig
    from artray.stages.embed import EmbedConfig

    for cls in (IngestConfig, AugmentConfig, CaptionConfig, EmbedConfig):
        assert {"input", "output", "actors", "cpus_per_actor", "batch_size", "shard_rows", "retry_failed"} <= set(
            cls.model_fields), cls.__name__
    assert all("gpus_per_actor" in cls.model_fields for cls in (AugmentConfig, CaptionConfig, EmbedConfig))
    path = tmp_path / "embed.yaml"  # a config written before the rename still loads, with a warning
    path.write_text("input: a\noutput: b\nfamily: longclip\ncheckpoint: /m\nactor_num_cpus: 0.5\nactor_num_gpus: 0\n")
    with caplog.at_level("WARNING"):
        cfg = load_config(EmbedConfig, str(path))
    assert (cfg.cpus_per_actor, cfg.gpus_per_actor) == (0.5, 0.0)
    assert "'actor_num_cpus' is deprecated: use 'cpus_per_actor'" in caplog.text
    assert load_config(AugmentConfig, overrides={"input": "a", "output": "b", "num_gpus": 0.5}).gpus_per_actor == 0.5
    with pytest.raises(ConfigError, match="give only cpus_per_actor"):
        load_config(CaptionConfig, overrides={"input": "a", "output": "b", "actor_num_cpus": 1, "cpus_per_actor": 2})
    assert AugmentConfig.model_fields["fail_after_batches"].json_schema_extra == {"hidden": True}  # a test hook


def test_unknown_key_and_wrong_type_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: a\noutput: b\nretires: 3\ntimeout_s: soon\n")
    with pytest.raises(ConfigError) as err:
        load_config(IngestConfig, str(path))
    msg = str(err.value)
    assert "retires" in msg and "timeout_s" in msg and str(path) in msg


def test_bad_yaml_and_missing_file_are_clear(tmp_path):
    (tmp_path / "x.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(IngestConfig, str(tmp_path / "x.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(IngestConfig, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["retries"])


def test_unreadable_config_files_and_set_values_are_config_errors(tmp_path):
    """Regressions (found by tests/test_fuzz_loaders.py): these raised UnicodeDecodeError,
    IsADirectoryError, RecursionError, ValueError and yaml's ScannerError instead of a ConfigError."""
    cases = {"latin1.yaml": b"src: caf\xe9\n", "deep.yaml": b"[" * 5000, "digits.yaml": b"shard_rows: " + b"1" * 5000}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=name):
            load_config(ImportConfig, str(tmp_path / name))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(ImportConfig, str(tmp_path))
    with pytest.raises(ConfigError, match=r"--set 'split_ratios=\[0.8,'"):
        parse_overrides(["split_ratios=[0.8,"])


def test_nested_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=null", "e=text"]) == {"a": {"b": 3, "c": [1, 2]}, "d": None,
                                                                           "e": "text"}


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    from artray.cli import main

    assert main(["corpus", "import", "--format", "artcap", str(tmp_path), str(tmp_path / "o"),
                 "--set", "split_ratios=[0.9, 0.9]"]) == 2
    assert "split_ratios" in capsys.readouterr().err


def test_atomic_local_write_leaves_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "d" / "shard.parquet"
    storage.write_parquet_atomic(pa.table({"x": [1]}), str(target))

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # the OS, not a model or Ray
    with pytest.raises(storage.StorageError, match="could not write"):
        storage.write_parquet_atomic(pa.table({"x": [2, 3]}), str(target))
    assert storage.read_parquet(str(target)).column("x").to_pylist() == [1]
    assert [p.name for p in target.parent.iterdir()] == ["shard.parquet"]  # no temp file left


def test_listing_skips_temp_and_private_files(tmp_path):
    for name in ("part-1.parquet", ".part-2.parquet.abc.tmp", "_manifest.json", "part-0.parquet"):
        (tmp_path / name).write_bytes(b"x")
    assert [storage.basename(u) for u in storage.list_files(str(tmp_path), ".parquet")] == [
        "part-0.parquet", "part-1.parquet"]
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_s3_round_trip_and_missing_bucket_error(s3_bucket, s3_endpoint):
    opts = storage.StorageOptions(endpoint_url=s3_endpoint)
    uri = f"{s3_bucket}/a/b.json"
    storage.write_json_atomic(uri, {"k": "v"}, opts)
    assert storage.read_json(uri, opts) == {"k": "v"}
    assert storage.list_files(f"{s3_bucket}/a", options=opts) == [uri]
    assert list(storage.iter_lines(uri, opts))[0] == b"{"
    storage.delete(f"{s3_bucket}/a", opts)
    assert storage.read_json(uri, opts) is None
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-x/k"):
        storage.write_bytes_atomic("s3://no-such-bucket-x/k", b"x", opts)


def test_unsupported_scheme_is_rejected():
    with pytest.raises(storage.StorageError, match="unsupported URI scheme"):
        storage.filesystem("gs://bucket/x")
