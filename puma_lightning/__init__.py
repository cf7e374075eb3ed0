"""puma_lightning: migrate per-user soft prompts between foundation LLMs with a PUMA adapter."""
