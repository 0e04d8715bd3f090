"""Exploration: latent-space tools, figures and the interactive explorer's answers."""
