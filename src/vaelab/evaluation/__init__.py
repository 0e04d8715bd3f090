"""Evaluation: ELBO, IWAE, metrics, codes, disentanglement, sampling and generation scores."""
