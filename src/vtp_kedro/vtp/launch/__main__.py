"""``python -m vtp_kedro.vtp.launch --config resolved.json [--task module:function]``.

Runs one training process, or one rank when started by ``torchrun`` (see ``launcher``), and
writes ``result.json`` naming the final checkpoint into the output folder (by default the
config file's folder).
"""

from __future__ import annotations

import argparse

from vtp_kedro.vtp.launch.launcher import console_logging, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vtp_kedro.vtp.launch",
                                     description="Train one process, or one torchrun rank, from a resolved config.")
    parser.add_argument("--config", required=True, help="the fully resolved config (JSON)")
    parser.add_argument("--task", default=None, help="task factory 'package.module:function' (overrides the config)")
    parser.add_argument("--output-dir", default=None, help="checkpoints, logs and result.json (default: the config's folder)")
    args = parser.parse_args(argv)
    console_logging()
    run(args.config, args.output_dir, args.task)


if __name__ == "__main__":
    main()
