"""The TOML schema: defaults, conversions, and errors that point at the line."""

import pytest

from fusefs.config import ConfigError, load_config, parse_config
from fusefs.units import format_size, parse_duration, parse_size


def test_defaults() -> None:
    cfg = parse_config("")
    assert cfg.cache.dram == 512 << 20
    assert cfg.policy.name == "workload_aware"
    assert cfg.policy.mrc is True  # live miss-ratio curves: measured cheap (docs/policies.md)
    assert cfg.mount.consistency == "close-to-open"
    assert cfg.rules == ()


def test_full_file() -> None:
    cfg = parse_config('''
[cache]
dir = "/nvme/tierfs"
size = "200GiB"
dram = "4GiB"
[policy]
name = "lru"
sequential_cutoff = "128KiB"
[mount]
consistency = "immutable"
attr_timeout = "500ms"
[[rule]]
path = "index/**"
pin = true
[[rule]]
path = "shards/*.tar"
class = "stream"
''')
    assert cfg.cache.size == 200 << 30
    assert cfg.cache.dram == 4 << 30
    assert cfg.policy.sequential_cutoff == 128 << 10
    assert cfg.mount.attr_timeout == 0.5
    assert cfg.rule_for("index/a/b.f32").pin
    assert cfg.rule_for("shards/x.tar").cls == "stream"
    assert cfg.rule_for("shards/sub/x.tar") is None
    assert cfg.rule_for("other") is None


@pytest.mark.parametrize("text,where", [
    ("[cache]\nsise = 1\n", "t.toml:2: cache.sise: unknown key; allowed: chunk_size, dir, dram, page_size, readahead_memory, remote_block, size, verify, walk_memory"),
    ("[cache]\ndram = \"lots\"\n", "t.toml:2: cache.dram: not a size"),
    ("[caches]\n", "t.toml:1: unknown table [caches]"),
    ("[mount]\nconsistency = \"sometimes\"\n", "t.toml:2: mount.consistency: expected one of: close-to-open, immutable"),
    ("[mount]\nallow_other = 1\n", "t.toml:2: mount.allow_other: expected true or false"),
    ("[[rule]]\npath = \"a\"\n[[rule]]\npath = \"b\"\nclas = \"x\"\n", "t.toml:5: rule[1].clas: unknown key"),
    ("[cache]\npage_size = \"3KiB\"\n", "t.toml:2: cache.page_size: must be a power of two"),
    ("[cache\n", "t.toml:1: invalid TOML"),
    ("[mount]\nmax_requests = 2\n", "t.toml:2: mount.max_requests: must be from 16 to 1024"),
    ("[write]\nupload_memory = \"8MiB\"\n", "t.toml:2: write.upload_memory: must be at least 16MiB"),
])
def test_errors_name_file_line_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "t.toml")
    assert str(exc.value).startswith(where), str(exc.value)


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))


def test_units() -> None:
    assert parse_size("4KiB") == 4096
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("1KB") == 1000
    assert parse_size(7) == 7
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert format_size(1536) == "1.5KiB"
    for bad in ("", "x", "-1", "1XB", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_object_store_keys() -> None:
    cfg = parse_config('[cache]\nremote_block = "128KiB"\n'
                       '[source]\nlisting_snapshot = "/var/lib/t.parquet"\ndir_markers = false\n')
    assert cfg.cache.remote_block == 128 << 10
    assert cfg.source.listing_snapshot == "/var/lib/t.parquet"
    assert cfg.source.dir_markers is False
    assert parse_config("").cache.remote_block == 64 << 10
    for bad in ('"6KiB"', '"2MiB"', "1024"):
        with pytest.raises(ConfigError, match="remote_block: must be a multiple of page_size"):
            parse_config(f"[cache]\nremote_block = {bad}\n", "t.toml")


@pytest.mark.parametrize("preset", ["training", "serving", "mixed"])
def test_example_presets_parse_and_comment_every_choice(preset: str) -> None:
    """examples/*.toml are valid configurations, and every key set has a comment above it."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", f"{preset}.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cfg = parse_config(text, path)
    assert cfg.policy.name == "workload_aware" and cfg.rules
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*[a-z_]+\s*=", line):
            j = i - 1
            while j >= 0 and re.match(r"\s*[a-z_]+\s*=", lines[j]):
                j -= 1  # keys that share one comment: the comment is above the group
            assert j >= 0 and (lines[j].lstrip().startswith("#")
                               or lines[j].startswith("[")), f"{path}:{i + 1}: no comment"


def test_write_destage_defer() -> None:
    assert parse_config("").write.destage_defer == 10.0
    assert parse_config('[write]\ndestage_defer = "500ms"\n').write.destage_defer == 0.5
    with pytest.raises(ConfigError, match="write.destage_defer"):
        parse_config("[write]\ndestage_defer = -1\n", "t.toml")


def test_etag_reads_reaches_the_object_store_tier() -> None:
    """[source] etag_reads (default on) is what the S3 tier is built with."""
    from fusefs.mount import source_options
    from fusefs.tiers.objectstore.options import ObjectStoreOptions

    assert source_options(parse_config(""))["etag_reads"] is True
    opts = source_options(parse_config("[source]\netag_reads = false\n"))
    assert opts["etag_reads"] is False
    assert ObjectStoreOptions.make({k: v for k, v in opts.items()
                                    if k in ObjectStoreOptions.__dataclass_fields__}).etag_reads is False


def test_memory_bounds_reach_the_daemon() -> None:
    """[write] upload_memory is what the object-store tier is built with (its use is in
    test_objectstore.py); [mount] max_requests defaults to the 64 tasks the daemon ran."""
    from fusefs.mount import source_options
    from fusefs.tiers.objectstore.options import ObjectStoreOptions

    assert parse_config("").mount.max_requests == 64
    opts = source_options(parse_config('[write]\nupload_memory = "256MiB"\n'))
    assert ObjectStoreOptions.make({k: v for k, v in opts.items()
                                    if k in ObjectStoreOptions.__dataclass_fields__}
                                   ).upload_memory == 256 * 1024 * 1024
