"""Chat plugins: video, quota/admin, help."""
