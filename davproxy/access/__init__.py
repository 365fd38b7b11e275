"""Access backends: how a share is enforced."""
