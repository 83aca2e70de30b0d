"""Dataset curation: the per-sample filter rules, exact and near-duplicate removal, the copy check
that decides near-duplicate candidates, the executors that run it on many workers, and the filter's
report. Reads shards through ``vtp.data``; nothing here trains or imports a model."""
