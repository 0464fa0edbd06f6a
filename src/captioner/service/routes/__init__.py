"""One router per concern: captions (inference), health (probes + metrics), web (the browser page)."""
