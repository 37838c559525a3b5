"""The python-wechaty adapter (for operators who still have a working puppet service)."""
