"""One module per hook library (torch, nnsight, transformer_lens), each with the same functions; see models.hooks."""
