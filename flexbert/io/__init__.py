"""Reading and writing models: checkpoints (safely), sharded folders, the transformers round
trip, published Hugging Face folders, the Hub and checkpoint averaging."""
