"""The two models, each with its config sections, training tasks, loaders and modes:
`patronus` (prototype-conditioned DDPM + latent model over s) and `bcos` (B-cos U-Net)."""
