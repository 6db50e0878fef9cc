"""Units of work that run on cluster workers: sketch, upscale, per-tile denoise step, decode, export."""
