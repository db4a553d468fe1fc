"""The demo stack (`make demo`) and its mock OpenAI-compatible upstream."""
