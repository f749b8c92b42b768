"""Train stage: incremental LoRA on the parent adapter, hyperparameters from the data, device and dtype choice, losses."""
