"""How good a decomposition is: reconstruction and sparsity (recon), next-token loss with it spliced in (splice)."""
