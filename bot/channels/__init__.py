"""Channel implementations: the local in-process channel and the WeChat (wechaty) adapter."""
