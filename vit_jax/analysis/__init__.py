"""What a trained model learned (ViT paper Fig. 7; Park & Kim, "How Do Vision Transformers
Work?", ICLR 2022). Pure functions on arrays; `run` applies them to a checkpoint or a sweep
(the command is `python -m vit_jax.analyze`).

- embeddings: principal components of the patch-embedding filters; position-embedding
  cosine similarity.
- attention: mean attention distance per head; attention rollout.
- fourier: relative log amplitude of feature maps along the frequency half-diagonal.
- robustness: noise confined to a frequency band.
- hessian: top Hessian eigenvalues by power iteration on Hessian-vector products.
- plots: the figures.
- run: `analyze(workdir, out)` and `analyze_sweep(sweep_dir)`.
"""
