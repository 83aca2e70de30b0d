"""Starting work: ``launcher`` runs a stage's training or a job in-process, under torchrun or
through a cluster command; ``runs`` names a run by its content and resumes it; the jobs that are
not training (``extract_latents``, ``sample_dit``) are launched the same way.
``python -m vtp_kedro.vtp.launch --config job.json`` runs any of them: the file's ``job`` says which."""
