"""Evaluation: native metrics over the infer engine (user data, likelihood multiple choice, MME, TextVQA/VQAv2),
an EvalScope bridge through our own server, reports and before/after comparisons."""
