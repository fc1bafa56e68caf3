"""Training from a dataset's fingerprint: plan, generated bundle, cross-validated training."""
