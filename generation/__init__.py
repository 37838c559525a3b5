"""Our own Pyramid Flow inference, the job queue and the GPU worker."""
