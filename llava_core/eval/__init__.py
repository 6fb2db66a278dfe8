"""Evaluation of LLaVA models: POPE, VQA exact match / accuracy, captioning metrics."""
