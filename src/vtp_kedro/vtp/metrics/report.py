"""The evaluation's reports: flat MLflow metrics and a Markdown table beside the paper's numbers.

``metrics`` is the nested dict of the evaluation pipeline (``reconstruction``, ``understanding``,
``generation``). Numbers with the ``_ref`` suffix live in the reference classifier's feature
space; the paper's column only ever sits beside Inception numbers of the same name.
"""

from __future__ import annotations

from typing import Any

from vtp_kedro.vtp.core.config import merge_mappings

# VTP-L-d64, the paper's Table 2: ImageNet 256 px, LightningDiT-XL/1 80 epochs, FID-50k without guidance.
PAPER_REFERENCE: dict[str, Any] = {
    "source": "VTP-L-d64 (paper Table 2: ImageNet 256 px; gFID-50k, LightningDiT-XL 80 epochs, no CFG)",
    "rfid": 0.36,
    "linear_probe": 0.857,
    "zero_shot": 0.782,
    "gfid": 2.81,
}


# What ``split_report`` moves out of metrics.json into protocol.json: how each number was measured
# (protocols, the environment, settings and counts), the context it is read against (chance, the
# raw-pixel probe, the supervised CNN, the reference classifier's own accuracy, the originals'
# class_acc_ref) and the breakdowns behind a headline number. metrics.json keeps the results of
# the tokenizer and the DiT: a `dvc metrics show` table of numbers.
PROTOCOL_KEYS = frozenset({
    "protocol", "environment",                                                            # how it was measured
    "cfg_scale", "samples", "images", "train_images", "val_images", "feature_dim", "lr",  # settings, counts
    "chance", "pixel_baseline_top1", "supervised_cnn_top1", "reference_classifier", "original",  # floors, ceilings
    "gen_class_acc_per_class", "top1_per_lr", "confusion_matrix", "is_std_ref", "is_std",  # breakdowns, spreads
})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_report(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, protocol)``: the report's numbers (a DVC metric: ``dvc metrics show`` reads as a
    table of results) and everything else at the same nested keys: protocols, environment, settings,
    counts, descriptions and the breakdowns (``PROTOCOL_KEYS``, text, lists, missing values).
    ``merge_report(*split_report(r)) == r``."""
    metrics: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    for key, value in report.items():
        if key in PROTOCOL_KEYS:
            protocol[key] = value
        elif isinstance(value, dict):
            numbers, rest = split_report(value)
            if numbers:
                metrics[key] = numbers
            if rest or not numbers:
                protocol[key] = rest
        elif _is_number(value):
            metrics[key] = value
        else:
            protocol[key] = value
    return metrics, protocol


def merge_report(metrics: dict[str, Any], protocol: dict[str, Any]) -> dict[str, Any]:
    """The whole report again from metrics.json and protocol.json (``split_report``'s inverse)."""
    return merge_mappings(metrics, protocol)


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    """Every numeric leaf as ``{"a.b.c": {"value", "step": 0}}`` (kedro-mlflow's metrics format);
    protocols, lists and missing values are left to the JSON artifact."""
    flat: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if key == "protocol":
            continue
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = {"value": float(value), "step": 0}
    return flat


def _number(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def _fid_name(entry: dict[str, Any], stem: str) -> tuple[str, Any]:
    """(name, value) of the Inception FID if measured, else the reference-space one."""
    for name in (stem, f"{stem}_ref"):
        if name in entry:
            return name, entry[name]
    return stem, None


def summary_markdown(metrics: dict[str, Any], paper: dict[str, Any] = PAPER_REFERENCE) -> str:
    """The headline table, then every FID's protocol."""
    rec, und, gen = metrics["reconstruction"], metrics["understanding"], metrics["generation"]
    probe, zero_shot = und["linear_probe"], und["zero_shot"]
    rows = [("| family | metric | this run | floor / ceiling | paper |"), "|---|---|---|---|---|"]
    for stage in ("pre_gan", "post_gan"):
        name, value = _fid_name(rec[stage], "rfid")
        label = stage.replace("_", "-")
        rows += [f"| reconstruction | PSNR ({label}) | {_number(rec[stage]['psnr'])} dB | | |",
                 f"| reconstruction | {name} ({label}) | {_number(value)} | 0 = identical | "
                 f"{_number(paper['rfid']) if name == 'rfid' and stage == 'post_gan' else ''} |"]
        if "class_acc_ref" in rec[stage]:
            rows.append(f"| reconstruction | class_acc_ref ({label}) | {_number(rec[stage]['class_acc_ref'], True)} | "
                        f"originals {_number(rec['original']['class_acc_ref'], True)} | |")
    baseline = probe.get("pixel_baseline_top1")
    rows.append(f"| understanding | linear probe top-1 ({probe['features']}) | {_number(probe['top1'], True)} | "
                f"chance {_number(probe['chance'], True)}, raw pixels {_number(baseline, True)}, "
                f"supervised CNN {_number(probe['supervised_cnn_top1'], True)} | {_number(paper['linear_probe'], True)} |")
    rows.append(f"| understanding | zero-shot top-1 | {_number(zero_shot.get('top1'), True)} | "
                f"chance {_number(probe['chance'], True)} | {_number(paper['zero_shot'], True)} |")
    for setting in ("unguided", "guided"):
        entry = gen[setting]
        label = f"cfg {entry['cfg_scale']:g}"
        name, value = _fid_name(entry, "gfid")
        paper_fid = _number(paper["gfid"]) if name == "gfid" and setting == "unguided" else ""
        suffix = "" if name == "gfid" else "_ref"
        rows += [f"| generation | {name} ({label}, {entry['samples']} samples) | {_number(value)} | | {paper_fid} |",
                 f"| generation | is{suffix} ({label}) | {_number(entry.get('is' + suffix))} | 1 = no variety | |",
                 f"| generation | precision / recall{suffix} ({label}) | {_number(entry.get('precision' + suffix))} / "
                 f"{_number(entry.get('recall' + suffix))} | | |",
                 f"| generation | gen_class_acc ({label}) | {_number(entry['gen_class_acc'], True)} | "
                 f"chance {_number(entry['chance'], True)}, post-GAN reconstructions "
                 f"{_number(rec['post_gan'].get('class_acc_ref'), True)} | |"]
    lines = ["# Evaluation summary", "", *rows, "",
             f"Paper column: {paper['source']}. Metrics ending in `_ref` are measured in the feature space of the "
             "reference classifier trained on this run's labelled train split (no Inception weights were configured); "
             "they compare tokenizers within this project and are not comparable with Inception FIDs.", "",
             "## Protocols", ""]
    for space, protocol in rec["protocol"].get("feature_spaces", {}).items():
        lines.append(f"- rFID ({space}): {protocol['extractor']} layer {protocol['fid_layer']}; "
                     f"{rec['protocol']['count']} images of {rec['protocol']['images']} vs their reconstructions at "
                     f"{rec['protocol']['image_size']} px")
    for setting in ("unguided", "guided"):
        for space, protocol in gen[setting].get("protocol", {}).items():
            sampler = protocol["sampler"]
            lines.append(
                f"- gFID {setting} ({space}): {protocol['extractor']} layer {protocol['fid_layer']}; "
                f"{protocol['generated_images']} samples vs {protocol['reference_images']} images of "
                f"{protocol['reference']}; {sampler['num_steps']} {sampler['solver']} steps, shift {sampler['shift']}, "
                f"CFG {sampler['cfg_scale']} from t >= {sampler['cfg_interval_start']} on {sampler['cfg_channels']} "
                f"channels, seed {sampler['seed']}; precision/recall k = {protocol['precision_recall_k']}")
    return "\n".join(lines) + "\n"


def headline_table(metrics: dict[str, Any]) -> str:
    """Six numbers beside their floors and ceilings, as plain text for the end of a run's log."""
    rec, und, gen = metrics["reconstruction"], metrics["understanding"], metrics["generation"]
    probe, guided = und["linear_probe"], gen["guided"]
    rfid_name, rfid = _fid_name(rec["post_gan"], "rfid")
    gfid_name, gfid = _fid_name(guided, "gfid")
    cfg = f"cfg {guided['cfg_scale']:g}"
    rows = [("metric", "this run", "floor / ceiling"),
            ("PSNR post-GAN (dB)", _number(rec["post_gan"]["psnr"]), ""),
            (f"{rfid_name} post-GAN", _number(rfid), "0 = identical"),
            (f"linear probe top-1 ({probe['features']})", _number(probe["top1"], True),
             f"chance {_number(probe['chance'], True)}, supervised CNN {_number(probe['supervised_cnn_top1'], True)}"),
            ("zero-shot top-1", _number(und["zero_shot"].get("top1"), True), f"chance {_number(probe['chance'], True)}"),
            (f"{gfid_name} ({cfg})", _number(gfid), ""),
            (f"gen_class_acc ({cfg})", _number(guided["gen_class_acc"], True),
             f"chance {_number(guided['chance'], True)}, reconstructions "
             f"{_number(rec['post_gan'].get('class_acc_ref'), True)}")]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}".rstrip() for a, b, c in rows)
