"""The shard readers: URL expansion and sample streaming, on good and damaged shards."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter
from pathlib import Path

import fsspec
import pytest

from vtp_kedro.vtp.data.shards import expand_urls, iter_shard_samples, write_shard


def _samples(count: int, prefix: str = "k") -> list[dict]:
    return [
        {"__key__": f"{prefix}{i:03d}", "jpg": bytes([i]) * 700, "txt": f"caption {i}", "json": b'{"i": %d}' % i}
        for i in range(count)
    ]


def _shard_bytes(samples: list[dict], tmp_path: Path) -> bytes:
    path = tmp_path / "scratch.tar"
    write_shard(path, samples)
    data = path.read_bytes()
    path.unlink()
    return data


def _raw_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar with exactly these members, for layouts write_shard would never produce."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, end of data) of each member."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset, m.offset_data + m.size) for m in tar.getmembers()]


def _read(url: str) -> tuple[list[dict], Counter]:
    errors: Counter = Counter()
    return list(iter_shard_samples(url, errors)), errors


# --- expand_urls ---------------------------------------------------------------------------


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("00002.tar", "00000.tar", "00001.tar", "notes.txt", ".00003.tar.abc.tmp"):
        (folder / name).write_bytes(b"x")
    return folder


def test_expand_file_directory_and_glob(shard_dir: Path) -> None:
    tars = [str(shard_dir / f"{i:05d}.tar") for i in range(3)]
    assert expand_urls(tars[1]) == [tars[1]]
    assert expand_urls(str(shard_dir)) == tars  # only *.tar, sorted, temp files ignored
    assert expand_urls(str(shard_dir / "0000[12].tar")) == tars[1:]
    assert expand_urls(str(shard_dir / "*.tar")) == tars


def test_expand_brace_keeps_pattern_order_and_lists_concatenate(shard_dir: Path) -> None:
    pattern = str(shard_dir / "{00002,00000}.tar")
    assert expand_urls(pattern) == [str(shard_dir / "00002.tar"), str(shard_dir / "00000.tar")]
    assert expand_urls(str(shard_dir / "{00000..00001}.tar")) == [str(shard_dir / "00000.tar"),
                                                                    str(shard_dir / "00001.tar")]
    both = expand_urls([str(shard_dir / "00001.tar"), str(shard_dir / "00000.tar")])
    assert both == [str(shard_dir / "00001.tar"), str(shard_dir / "00000.tar")]


def test_expand_fsspec_urls() -> None:
    fs = fsspec.filesystem("memory")
    for name in ("b.tar", "a.tar", "c.txt"):
        fs.pipe(f"/expand-test/{name}", b"x")
    try:
        assert expand_urls("memory://expand-test/*.tar") == ["memory:///expand-test/a.tar",
                                                              "memory:///expand-test/b.tar"]
        assert expand_urls("memory://expand-test") == ["memory:///expand-test/a.tar",
                                                        "memory:///expand-test/b.tar"]
        assert expand_urls("memory://expand-test/{b,a}.tar") == ["memory://expand-test/b.tar",
                                                                  "memory://expand-test/a.tar"]
        with pytest.raises(FileNotFoundError, match="expand-test/z.tar"):
            expand_urls("memory://expand-test/z.tar")
    finally:
        fs.rm("/expand-test", recursive=True)


def test_expand_file_url(shard_dir: Path) -> None:
    assert expand_urls(f"file://{shard_dir}/00001.tar") == [f"file://{shard_dir}/00001.tar"]
    assert expand_urls(f"file://{shard_dir}/*.tar") == [f"file://{shard_dir}/{i:05d}.tar" for i in range(3)]


@pytest.mark.parametrize("pattern", ["missing.tar", "*.nothing", "empty_dir", "{00000..00001}.tar"])
def test_expand_missing_names_the_pattern(tmp_path: Path, pattern: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "00000.tar").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as info:
        expand_urls(str(tmp_path / pattern))
    assert pattern in str(info.value)
    if "{" in pattern:
        assert "first missing" in str(info.value) and "00001.tar" in str(info.value)


# --- iter_shard_samples: good shards --------------------------------------------------------


def test_round_trip_groups_members_by_key(tmp_path: Path) -> None:
    samples = _samples(3)
    write_shard(tmp_path / "a.tar", samples)
    read, errors = _read(str(tmp_path / "a.tar"))
    assert errors == Counter()
    assert [s["__key__"] for s in read] == ["k000", "k001", "k002"]
    for original, sample in zip(samples, read):
        assert sample["__url__"] == str(tmp_path / "a.tar")
        assert sample["jpg"] == original["jpg"]
        assert sample["txt"] == original["txt"].encode()
        assert sample["json"] == original["json"]


def test_key_convention_lowercase_extensions_and_meta(tmp_path: Path) -> None:
    data = _raw_tar([
        ("__index__", b"meta"),
        ("dir/x.y.JPG", b"img"),
        ("dir/x.y.Seg.PNG", b"mask"),
        ("dir/x.y.TXT", b"cap"),
        ("z.txt", b"other"),
    ])
    (tmp_path / "a.tar").write_bytes(data)
    read, errors = _read(str(tmp_path / "a.tar"))
    assert errors == Counter()
    assert [s["__key__"] for s in read] == ["dir/x", "z"]
    assert {k: v for k, v in read[0].items() if not k.startswith("__")} == {
        "y.jpg": b"img", "y.seg.png": b"mask", "y.txt": b"cap"}


def test_reads_fsspec_and_gzip(tmp_path: Path) -> None:
    data = _shard_bytes(_samples(2), tmp_path)
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(data, mtime=0))
    read, errors = _read(str(tmp_path / "a.tar.gz"))
    assert [s["__key__"] for s in read] == ["k000", "k001"] and not errors
    fs = fsspec.filesystem("memory")
    fs.pipe("/read-test/a.tar", data)
    try:
        read, errors = _read("memory://read-test/a.tar")
        assert [s["__key__"] for s in read] == ["k000", "k001"] and not errors
    finally:
        fs.rm("/read-test", recursive=True)


# --- iter_shard_samples: bad shards ---------------------------------------------------------


def test_zero_byte_and_memberless_shards_are_empty(tmp_path: Path) -> None:
    (tmp_path / "zero.tar").write_bytes(b"")
    (tmp_path / "nothing.tar").write_bytes(_raw_tar([]))
    for name in ("zero.tar", "nothing.tar"):
        read, errors = _read(str(tmp_path / name))
        assert read == [] and errors == Counter(empty_shard=1)


@pytest.mark.parametrize("content", [b"this is not a tar file " * 100, b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000])
def test_not_a_tar_is_unreadable(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.tar").write_bytes(content)
    read, errors = _read(str(tmp_path / "bad.tar"))
    assert read == [] and errors == Counter(unreadable_shard=1)


def test_vanished_shard_is_unreadable(tmp_path: Path) -> None:
    read, errors = _read(str(tmp_path / "gone.tar"))
    assert read == [] and errors == Counter(unreadable_shard=1)


def test_truncated_shard_keeps_complete_samples_only(tmp_path: Path) -> None:
    data = _shard_bytes(_samples(3), tmp_path)
    offsets = _member_offsets(data)
    k2_jpg = next(o for o in offsets if o[0] == "k002.jpg")
    k1_txt = next(o for o in offsets if o[0] == "k001.txt")
    cuts = {
        "inside k002's image data": k2_jpg[2] - 100,
        "inside k002's header": k2_jpg[1] + 100,
        "at the end of k001's last member": k1_txt[2],
        "just before the end-of-archive blocks": offsets[-1][2],
    }
    expected_keys = {
        "inside k002's image data": ["k000", "k001"],
        # Until the next key is read nothing tells whether k001 had more members, so the
        # sample being built when the data stops is dropped.
        "inside k002's header": ["k000"],
        "at the end of k001's last member": ["k000"],
        "just before the end-of-archive blocks": ["k000", "k001"],
    }
    for where, cut in cuts.items():
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        read, errors = _read(str(tmp_path / "cut.tar"))
        assert [s["__key__"] for s in read] == expected_keys[where], where
        assert errors == Counter(truncated_shard=1), where


def test_garbage_header_mid_shard_is_corrupt(tmp_path: Path) -> None:
    data = _shard_bytes(_samples(3), tmp_path)
    header = next(o for o in _member_offsets(data) if o[0] == "k001.json")[1]
    damaged = data[:header] + b"G" * 512 + data[header + 512:]
    (tmp_path / "bad.tar").write_bytes(damaged)
    read, errors = _read(str(tmp_path / "bad.tar"))
    assert [s["__key__"] for s in read] == ["k000"]
    assert errors == Counter(corrupt_shard=1)


def test_unkeyed_and_duplicate_members_are_counted(tmp_path: Path) -> None:
    data = _raw_tar([("README", b"x"), ("a.jpg", b"1"), ("a.jpg", b"2"), ("a.txt", b"t")])
    (tmp_path / "a.tar").write_bytes(data)
    read, errors = _read(str(tmp_path / "a.tar"))
    assert read == [{"__key__": "a", "__url__": str(tmp_path / "a.tar"), "jpg": b"1", "txt": b"t"}]
    assert errors == Counter(unkeyed_member=1, duplicate_member=1)


def test_errors_counter_is_optional(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"junk" * 300)
    assert list(iter_shard_samples(str(tmp_path / "bad.tar"))) == []


def test_shard_prefix_takes_the_fewest_shards_that_hold_the_samples(tmp_path: Path) -> None:
    from vtp_kedro.vtp.data.shards import shard_prefix

    urls = []
    for index, count in enumerate((3, 4, 5)):
        path = tmp_path / f"{index:05d}.tar"
        write_shard(path, _samples(count, prefix=f"s{index}_"))
        urls.append(str(path))
    assert shard_prefix(urls, 1) == (urls[:1], 3)
    assert shard_prefix(urls, 3) == (urls[:1], 3)
    assert shard_prefix(urls, 4) == (urls[:2], 7)
    assert shard_prefix(urls, 12) == (urls, 12)
    with pytest.raises(ValueError, match="13 samples: the 3 shards hold only 12"):
        shard_prefix(urls, 13)
    # data_filtering's manifest beside the shards is trusted for the counts (no shard is read)
    (tmp_path / "filter_report.json").write_text(
        '{"shards": [{"name": "00000.tar", "samples": 10, "sha256": "x"}]}')
    assert shard_prefix(urls, 10) == (urls[:1], 10)
