"""What running a model on Composer needs, shared by pretraining and fine-tuning: the Composer
model wrapper, device and precision choice, whole tensors from shards, metrics.jsonl and the
one table of GPU figures."""
