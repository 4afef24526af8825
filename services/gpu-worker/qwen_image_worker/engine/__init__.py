"""Model loading, the demo model and generation (these touch torch), and a simulated engine."""
