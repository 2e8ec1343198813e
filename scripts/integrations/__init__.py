"""Integrations of the inference SDK with agent frameworks; each needs its extra (``splitrelay[pipecat]``)."""
