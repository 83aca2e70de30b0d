"""Multi-rank jobs that are not training: each module is ``python -m vtp_kedro.vtp.jobs.<name> --config <file>``.

A Kedro node writes the job's resolved config and starts it with ``train.launcher.launch_job``
(in-process, under torchrun, or through a cluster command), exactly as training runs start.
"""
