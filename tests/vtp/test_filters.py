"""The data-filtering engine: each rule, first-rule counting, dedup, parallel determinism, output."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pydantic
import pytest
from PIL import Image

from vtp_kedro.vtp.curation.filter_report import (
    planted_defect_outcome,
    plot_caption_length_histogram,
    plot_resolution_histogram,
    read_filter_report,
    write_filter_report,
)
from vtp_kedro.vtp.curation.filters import (
    REASONS,
    ClipScorer,
    ClipScoreRule,
    FilterReport,
    FilterRules,
    _phash,
    filter_shards,
)
from vtp_kedro.vtp.data.shards import ShardInfo, iter_shard_samples, write_shard
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, draw_scene, sample_scene

CAPTION = "a red circle on a grey background"


def _pixels(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A smooth random picture: distinct seeds give far-apart perceptual hashes."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BICUBIC)


def _encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _sample(key: str, seed: int, caption: str | bytes | None = CAPTION, size=(64, 64), **members) -> dict:
    sample = {"__key__": key, "jpg": _encode(_pixels(seed, size)), "json": json.dumps({"key": key}).encode()}
    if caption is not None:
        sample["txt"] = caption.encode() if isinstance(caption, str) else caption
    sample.update(members)
    return {name: value for name, value in sample.items() if value is not None}


def _run(tmp_path: Path, samples: list[dict], rules: FilterRules = FilterRules(), **kwargs):
    write_shard(tmp_path / "in" / "00000.tar", samples)
    return filter_shards(str(tmp_path / "in"), tmp_path / "out", rules, samples_per_shard=4, **kwargs)


def _output(tmp_path: Path) -> list[dict]:
    return [
        sample
        for shard in sorted((tmp_path / "out").glob("*.tar"))
        for sample in iter_shard_samples(str(shard))
    ]


def _only(reason: str, count: int = 1) -> dict[str, int]:
    return {name: count if name == reason else 0 for name in REASONS}


_JPEG = _encode(_pixels(0))
_BAD_SAMPLES = {
    "missing_image": {"__key__": "bad", "txt": CAPTION.encode()},
    "undecodable_image/zero_bytes": _sample("bad", 1, jpg=b""),
    "undecodable_image/truncated": _sample("bad", 1, jpg=_JPEG[: len(_JPEG) // 2]),
    "undecodable_image/not_an_image": _sample("bad", 1, jpg=None, png=b"<html>not a png</html>"),
    "missing_caption": _sample("bad", 1, caption=None),
    "invalid_caption/not_utf8": _sample("bad", 1, caption=b"a red \xff\xfe circle"),
    "invalid_caption/binary": _sample("bad", 1, caption=b"a red\x00\x01 circle"),
    "invalid_caption/enormous": _sample("bad", 1, caption="word " * 2000),
    "empty_caption": _sample("bad", 1, caption=" \n\t"),
    "too_small": _sample("bad", 1, size=(64, 16)),
    "aspect_ratio": _sample("bad", 1, size=(256, 64)),
    "caption_words/too_few": _sample("bad", 1, caption="circle"),
    "caption_words/too_many": _sample("bad", 1, caption="red " * 78),
}


@pytest.mark.parametrize("case", sorted(_BAD_SAMPLES))
def test_each_per_sample_rule(tmp_path: Path, case: str) -> None:
    report = _run(tmp_path, [_sample("good", 0), _BAD_SAMPLES[case]])
    assert report.dropped == _only(case.split("/")[0])
    assert (report.total, report.kept) == (2, 1)
    assert [s["__key__"] for s in _output(tmp_path)] == ["good"]


def test_exact_duplicate_keeps_first_occurrence(tmp_path: Path) -> None:
    first = _sample("first", 0)
    copy = dict(first, __key__="copy", txt=b"another caption for the same picture")
    report = _run(tmp_path, [first, _sample("other", 1), copy])
    assert report.dropped == _only("exact_duplicate")
    assert [s["__key__"] for s in _output(tmp_path)] == ["first", "other"]


def test_near_duplicate_is_caught_within_threshold(tmp_path: Path) -> None:
    original = _sample("original", 0)
    recompressed = dict(original, __key__="recompressed", jpg=_encode(_pixels(0), quality=40))
    assert recompressed["jpg"] != original["jpg"]
    report = _run(tmp_path, [original, _sample("other", 1), recompressed])
    assert report.dropped == _only("near_duplicate")
    assert [s["__key__"] for s in _output(tmp_path)] == ["original", "other"]

    no_near_dedup = FilterRules(near_dup_hamming=None)
    assert _run(tmp_path, [original, _sample("other", 1), recompressed], no_near_dedup).kept == 3


def test_the_copy_check_keeps_a_picture_the_hash_cannot_tell_apart(tmp_path: Path) -> None:
    # the same scene with a red and with a blue main object: nearly one grey pHash, two pictures
    scene = sample_scene(SyntheticConfig(), "train", 9)
    red = dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], rgb=(220, 40, 40)), *scene.objects[1:]))
    blue = dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], rgb=(40, 90, 220)), *scene.objects[1:]))
    red_image, blue_image = draw_scene(red, 32), draw_scene(blue, 32)
    assert bin(_phash(red_image) ^ _phash(blue_image)).count("1") <= 4  # within the rule's 8 bits
    samples = [_sample("red", 0, jpg=None, png=_encode(red_image, "PNG")),
               _sample("blue", 0, jpg=None, png=_encode(blue_image, "PNG")),
               _sample("red_again", 0, jpg=_encode(red_image.resize((48, 48), Image.BICUBIC), quality=80))]
    report = _run(tmp_path, samples)
    assert report.dropped == _only("near_duplicate")
    assert [s["__key__"] for s in _output(tmp_path)] == ["red", "blue"]
    hash_only = _run(tmp_path, samples, FilterRules(near_dup_check=None))
    assert hash_only.dropped == _only("near_duplicate", 2)


def test_a_cropped_copy_is_caught_through_the_crop_variants(tmp_path: Path) -> None:
    photo = Image.open(io.BytesIO(_encode(_pixels(3, (160, 160))))).convert("RGB")
    photo = Image.fromarray(np.asarray(photo) // 2 + np.asarray(_pixels(4, (160, 160))) // 2)  # more detail
    cropped = photo.crop((8, 8, 152, 152))  # 5% off every side
    assert bin(_phash(photo) ^ _phash(cropped)).count("1") > 8  # the own hashes are too far apart
    samples = [_sample("photo", 0, jpg=_encode(photo)), _sample("other", 1), _sample("cropped", 0, jpg=_encode(cropped))]
    assert _run(tmp_path, samples, FilterRules(near_dup_hamming=8, near_dup_crop_variants=False)).kept == 3
    report = _run(tmp_path, samples, FilterRules(near_dup_hamming=8))
    assert report.dropped == _only("near_duplicate")
    assert [s["__key__"] for s in _output(tmp_path)] == ["photo", "other"]


def test_first_failed_rule_counts(tmp_path: Path) -> None:
    # Too small, empty caption and a duplicate at once: empty_caption is checked first.
    tiny_empty = _sample("tiny_empty", 2, caption="   ", size=(8, 8))
    # Too small and too long: too_small is checked before aspect_ratio.
    tiny_long = _sample("tiny_long", 3, size=(80, 8))
    duplicate_too_small = dict(tiny_long, __key__="duplicate_too_small")
    report = _run(tmp_path, [_sample("good", 0), tiny_empty, tiny_long, duplicate_too_small])
    assert report.dropped == {**_only("too_small", 2), "empty_caption": 1}
    assert report.total == report.kept + sum(report.dropped.values())


def test_keys_and_members_kept_byte_for_byte(tmp_path: Path) -> None:
    samples = [_sample(f"dir/sample{i}", i, cls=str(i).encode()) for i in range(6)]
    _run(tmp_path, samples)
    output = _output(tmp_path)
    assert [s["__key__"] for s in output] == [s["__key__"] for s in samples]
    for original, written in zip(samples, output):
        assert {k: v for k, v in written.items() if k != "__url__"} == original


def _multi_shard_input(tmp_path: Path) -> list[str]:
    """Five shards mixing good, bad and duplicate samples, duplicates across shards."""
    urls = []
    for shard in range(5):
        samples = [_sample(f"s{shard}_{i}", 10 * shard + i) for i in range(5)]
        samples.append(_sample(f"s{shard}_dup", 10 * ((shard + 1) % 5)))  # copy of another shard's first
        samples.append(_sample(f"s{shard}_small", 99, size=(16, 16)))
        path = tmp_path / "in" / f"{shard:05d}.tar"
        write_shard(path, samples)
        urls.append(str(path))
    return urls


def test_output_identical_for_one_and_two_workers(tmp_path: Path) -> None:
    urls = _multi_shard_input(tmp_path)
    one = filter_shards(urls, tmp_path / "one", FilterRules(), samples_per_shard=7, num_workers=1)
    two = filter_shards(urls, tmp_path / "two", FilterRules(), samples_per_shard=7, num_workers=2)
    assert one.to_dict() == two.to_dict()
    digests = {
        name: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / name).glob("*.tar"))]
        for name in ("one", "two")
    }
    assert digests["one"] == digests["two"] == [info.sha256 for info in one.shards]
    assert [info.samples for info in one.shards] == [7, 7, 7, 4]
    assert one.kept == 25 and one.dropped["exact_duplicate"] == 5 and one.dropped["too_small"] == 5
    for name in ("widths", "heights", "caption_words", "kept_mask"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))


def _digests(folder: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))]


@pytest.mark.parametrize("partitions", [1, 3, 64])
def test_output_identical_for_any_number_of_dedup_partitions(tmp_path: Path, partitions: int) -> None:
    urls = _multi_shard_input(tmp_path)
    rules = FilterRules(near_dup_hamming=10)
    base = filter_shards(urls, tmp_path / "base", rules, samples_per_shard=7, dedup_partitions=16)
    other = filter_shards(urls, tmp_path / "other", rules, samples_per_shard=7, dedup_partitions=partitions)
    assert other.to_dict() == base.to_dict() and _digests(tmp_path / "other") == _digests(tmp_path / "base")
    np.testing.assert_array_equal(other.kept_mask, base.kept_mask)


def test_the_dask_executor_gives_the_process_pool_output(tmp_path: Path) -> None:
    urls = _multi_shard_input(tmp_path)
    rules = FilterRules(near_dup_hamming=10)
    pool = filter_shards(urls, tmp_path / "pool", rules, samples_per_shard=7, num_workers=2)
    environ = dict(os.environ)
    dask = filter_shards(urls, tmp_path / "dask", rules, samples_per_shard=7, num_workers=2, executor="dask")
    # Dask's nannies set OMP_NUM_THREADS=1 and more in the caller's environment; left there, a
    # later torchrun would train on one thread (different numbers). The executor puts it back.
    assert dict(os.environ) == environ
    assert dask.to_dict() == pool.to_dict() and _digests(tmp_path / "dask") == _digests(tmp_path / "pool")
    for name in ("widths", "heights", "caption_words", "kept_mask"):
        np.testing.assert_array_equal(getattr(dask, name), getattr(pool, name))


def test_a_scheduler_address_is_for_dask_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scheduler_address is for executor 'dask'"):
        filter_shards(_multi_shard_input(tmp_path), tmp_path / "out", FilterRules(), 7, scheduler_address="tcp://x:1")


def test_output_is_atomic_and_replaces_earlier_run(tmp_path: Path) -> None:
    samples = [_sample(f"k{i}", i) for i in range(9)]
    write_shard(tmp_path / "in" / "00000.tar", samples)
    first = filter_shards(str(tmp_path / "in"), tmp_path / "out", FilterRules(), samples_per_shard=2)
    assert len(first.shards) == 5
    second = filter_shards(str(tmp_path / "in"), tmp_path / "out", FilterRules(), samples_per_shard=5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.tar", "00001.tar"]
    assert [info.samples for info in second.shards] == [5, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no temporary folders left


@pytest.mark.parametrize("workers", [1, 2])
def test_output_to_an_fsspec_url_equals_the_local_output_and_replaces_an_earlier_one(tmp_path: Path,
                                                                                    workers: int) -> None:
    """file:// goes through fsspec as s3:// would (one upload per shard, the report last)."""
    urls = _multi_shard_input(tmp_path)
    rules = FilterRules(near_dup_hamming=10)
    local = filter_shards(urls, tmp_path / "local", rules, samples_per_shard=7)
    url = f"file://{tmp_path}/bucket/filtered"
    (tmp_path / "bucket/filtered").mkdir(parents=True)
    (tmp_path / "bucket/filtered/00099.tar").write_bytes(b"an earlier run's shard")
    (tmp_path / "bucket/filtered/filter_report.json").write_text("{}")
    remote = filter_shards(urls, url, rules, samples_per_shard=7, num_workers=workers)
    write_filter_report(remote, url)
    assert remote.to_dict() == local.to_dict()
    assert _digests(tmp_path / "bucket/filtered") == _digests(tmp_path / "local")
    assert read_filter_report(url).to_dict() == local.to_dict()
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["filtered"]


def test_a_filter_report_round_trips_through_memory_fs() -> None:
    report = FilterReport(total=3, kept=2, dropped={r: 0 for r in REASONS}, shard_errors={},
                          shards=[ShardInfo("00000.tar", 2, "ab")], widths=np.array([4, 5, 6]),
                          heights=np.array([4, 5, 6]), caption_words=np.array([1, 2, 3]),
                          kept_mask=np.array([True, False, True]))
    write_filter_report(report, "memory://filtered")
    again = read_filter_report("memory://filtered")
    assert again.to_dict() == report.to_dict()
    np.testing.assert_array_equal(again.kept_mask, report.kept_mask)
    with pytest.raises(FileNotFoundError, match="no filter report memory://elsewhere/filter_report.json"):
        read_filter_report("memory://elsewhere")


@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_bad_shards_are_counted_and_the_run_goes_on(tmp_path: Path, executor: str) -> None:
    write_shard(tmp_path / "in" / "00000.tar", [_sample("good", 0)])
    (tmp_path / "in" / "00001.tar").write_bytes(b"")
    (tmp_path / "in" / "00002.tar").write_bytes(b"not a tar" * 200)
    write_shard(tmp_path / "whole.tar", [_sample("kept", 1), _sample("cut", 2)])
    whole = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "in" / "00003.tar").write_bytes(whole[: len(whole) // 2 + 700])
    # bad samples too: a missing caption, an undecodable image, a caption with no image member
    write_shard(tmp_path / "in" / "00004.tar", [_sample("no_caption", 3, caption=None), _sample("broken", 4, jpg=b"x"),
                                               {"__key__": "orphan", "txt": CAPTION}])
    report = filter_shards(str(tmp_path / "in"), tmp_path / "out", FilterRules(), samples_per_shard=4,
                           num_workers=2, executor=executor)
    assert report.shard_errors["empty_shard"] == 1
    assert report.shard_errors["unreadable_shard"] == 1
    assert report.shard_errors["truncated_shard"] == 1
    assert [report.dropped[r] for r in ("missing_caption", "undecodable_image", "missing_image")] == [1, 1, 1]
    assert [s["__key__"] for s in _output(tmp_path)] == ["good", "kept"]


def test_missing_input_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        filter_shards(str(tmp_path / "nowhere" / "*.tar"), tmp_path / "out", FilterRules(), 4)
    assert not (tmp_path / "out").exists()


def test_report_arrays_and_dict(tmp_path: Path) -> None:
    samples = [_sample("a", 0, size=(64, 48)), _sample("b", 1, caption=None, size=(40, 64)),
               _sample("c", 2, jpg=b"broken")]
    report = _run(tmp_path, samples)
    np.testing.assert_array_equal(report.widths, [64, 40])  # the undecodable image is left out
    np.testing.assert_array_equal(report.heights, [48, 64])
    np.testing.assert_array_equal(report.caption_words, [len(CAPTION.split()), -1])
    np.testing.assert_array_equal(report.kept_mask, [True, False])
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["total"] == 3 and as_dict["kept"] == 1
    assert list(as_dict["dropped"]) == list(REASONS)
    assert as_dict["shards"] == [{"name": "00000.tar", "samples": 1, "sha256": report.shards[0].sha256}]


def test_plots(tmp_path: Path) -> None:
    report = _run(tmp_path, [_sample(f"k{i}", i, size=(64 + 8 * i, 64)) for i in range(5)]
                  + [_sample("small", 9, size=(20, 20))])
    resolution = plot_resolution_histogram(report)
    assert [ax.get_xlabel() for ax in resolution.axes] == ["width (px)", "height (px)"]
    caption = plot_caption_length_histogram(report)
    (ax,) = caption.axes
    assert ax.get_title() and ax.get_ylabel() == "samples (log scale)" and ax.get_yscale() == "log"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["input (6)", "kept (5)"]
    for figure in (resolution, caption):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"min_side": 0}, ["min_side"]),
        ({"max_aspect_ratio": 0.5}, ["max_aspect_ratio"]),
        ({"near_dup_hamming": 64}, ["near_dup_hamming"]),
        ({"min_caption_words": 10, "max_caption_words": 5}, ["min_caption_words", "max_caption_words"]),
        ({"max_caption_bytes": -1}, ["max_caption_bytes"]),
        ({"min_sides": 32}, ["min_sides"]),
        ({"clip_score": {"enabled": True}}, ["clip_score", "checkpoint"]),
        ({"clip_score": {"min_score": 2.0}}, ["clip_score.min_score"]),
    ],
)
def test_config_errors_name_the_key(values: dict, names: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        FilterRules.model_validate(values)
    for name in names:
        assert name in str(info.value)


# --- CLIP score -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipScoreRule:
    """A random-init open_clip model small enough to run in a test, saved as a local checkpoint."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "vtp-test-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "vtp-test-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("vtp-test-tiny-clip")
    torch.save(model.state_dict(), folder / "tiny_clip.pt")
    return ClipScoreRule(enabled=True, model="vtp-test-tiny-clip", checkpoint=str(folder / "tiny_clip.pt"))


def test_clip_score_is_cosine_of_the_embeddings(tiny_clip: ClipScoreRule) -> None:
    import torch

    scorer = ClipScorer(tiny_clip)
    images = [_pixels(seed) for seed in range(4)]
    captions = [CAPTION, "a blue star", "two green rings", "a heart"]
    scores = scorer(images, captions)
    with torch.no_grad():
        image_features = scorer.model.encode_image(torch.stack([scorer.preprocess(im) for im in images]))
        text_features = scorer.model.encode_text(scorer.tokenizer(captions))
    expected = torch.nn.functional.cosine_similarity(image_features, text_features).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(scorer([scorer.preprocess(im) for im in images], captions), scores, atol=1e-6)


def test_clip_rule_drops_low_scores(tmp_path: Path, tiny_clip: ClipScoreRule) -> None:
    samples = [_sample(f"k{i}", i, caption=f"a shape number {i} on grey") for i in range(6)]
    scores = ClipScorer(tiny_clip)([_pixels(i) for i in range(6)], [f"a shape number {i} on grey" for i in range(6)])
    threshold = float(np.median(scores))
    rules = FilterRules(clip_score=tiny_clip.model_copy(update={"min_score": threshold, "batch_size": 4}))
    report = _run(tmp_path, samples, rules)
    assert report.dropped == _only("clip_score", int((scores < threshold).sum()))
    assert [s["__key__"] for s in _output(tmp_path)] == [f"k{i}" for i in range(6) if scores[i] >= threshold]


def test_missing_clip_checkpoint_fails_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_checkpoint.pt"
    rules = FilterRules(clip_score=ClipScoreRule(enabled=True, checkpoint=str(missing)))
    # The input is missing too: the checkpoint error proves nothing was read first.
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint.pt"):
        filter_shards(str(tmp_path / "missing_input"), tmp_path / "out", rules, samples_per_shard=4)


def test_counts_add_up(tmp_path: Path) -> None:
    samples = [_BAD_SAMPLES[case] | {"__key__": f"bad{i}"} for i, case in enumerate(sorted(_BAD_SAMPLES))]
    report = _run(tmp_path, [_sample("good", 0), *samples])
    assert report.kept == 1
    assert report.total == len(samples) + 1 == report.kept + sum(report.dropped.values())
    assert Counter({k: v for k, v in report.dropped.items() if v}) == Counter(
        case.split("/")[0] for case in _BAD_SAMPLES)


def test_report_round_trips_through_its_folder(tmp_path) -> None:
    from vtp_kedro.vtp.curation.filter_report import read_filter_report, write_filter_report
    from vtp_kedro.vtp.curation.filters import FilterReport
    from vtp_kedro.vtp.data.shards import ShardInfo

    report = FilterReport(
        total=3, kept=1, dropped={"too_small": 2}, shard_errors={"empty_shard": 0},
        shards=[ShardInfo("00000.tar", 1, "ab")], widths=np.array([32, 8, 8]), heights=np.array([32, 8, 8]),
        caption_words=np.array([5, 4, -1]), kept_mask=np.array([True, False, False]),
    )
    write_filter_report(report, tmp_path)
    restored = read_filter_report(tmp_path)
    assert restored.to_dict() == report.to_dict()
    assert np.array_equal(restored.caption_words, report.caption_words)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(FileNotFoundError, match="data_filtering"):
        read_filter_report(tmp_path / "elsewhere")


def test_filtering_catches_every_defect_the_generator_plants(tmp_path) -> None:
    """End to end, with the default rules: each planted web-data defect (near duplicates
    included) is dropped under the rule named after it, and no clean sample is dropped."""
    import collections
    import json

    from vtp_kedro.vtp.synthetic.generator import (
        DEFECTS,
        SyntheticConfig,
        iter_captioned_samples,
        write_captioned_shards,
    )

    config = SyntheticConfig()
    planted = collections.Counter(json.loads(s["json"]).get("defect") for s in iter_captioned_samples(config, 300, defect_fraction=0.3))
    assert set(planted) - {None} == set(DEFECTS)
    write_captioned_shards(tmp_path / "raw", config, count=300, samples_per_shard=50, defect_fraction=0.3)
    report = filter_shards(str(tmp_path / "raw"), tmp_path / "out", FilterRules(), samples_per_shard=100)
    assert {reason: n for reason, n in report.dropped.items() if n} == {d: planted[d] for d in DEFECTS}
    assert report.kept == planted[None]
    outcome = planted_defect_outcome(tmp_path / "raw", tmp_path / "out")
    assert outcome == {"planted": {d: {"planted": planted[d], "dropped": planted[d]} for d in sorted(DEFECTS)},
                       "clean": {"total": planted[None], "dropped": 0}}
    assert planted_defect_outcome(tmp_path / "out", tmp_path / "out") is None  # no planted faults: no section
