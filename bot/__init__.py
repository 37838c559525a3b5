"""Channel-agnostic bot core of 小爱视频."""
