"""Model loading, the demo model, and generation: everything that touches torch."""
