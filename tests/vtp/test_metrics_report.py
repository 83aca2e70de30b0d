"""metrics.json holds numbers only (a readable `dvc metrics show`); protocol.json the rest at the same keys."""

from __future__ import annotations

from vtp_kedro.vtp.metrics.report import merge_report, split_report


def test_split_keeps_the_numbers_and_moves_protocols_settings_and_breakdowns_out() -> None:
    report = {
        "reconstruction": {"post_gan": {"psnr": 21.5, "images": 20, "rfid_ref": 3.0},
                           "protocol": {"images": "data/01_raw/labelled_images/val", "image_size": 32}},
        "understanding": {"linear_probe": {"top1": 0.5, "chance": 0.1, "features": "bottleneck",
                                           "top1_per_lr": {"0.1": 0.4}, "confusion_matrix": [[1, 0], [0, 1]]},
                          "zero_shot": {"top1": None, "skipped": "no text tower"}},
        "environment": {"torch": "2.14.1"},
        "flag": True,
    }
    metrics, protocol = split_report(report)
    assert metrics == {"reconstruction": {"post_gan": {"psnr": 21.5, "rfid_ref": 3.0}},
                       "understanding": {"linear_probe": {"top1": 0.5}}}
    assert protocol["reconstruction"]["post_gan"] == {"images": 20}
    assert protocol["understanding"]["zero_shot"] == {"top1": None, "skipped": "no text tower"}
    assert protocol["environment"] == {"torch": "2.14.1"} and protocol["flag"] is True
    assert merge_report(metrics, protocol) == report
