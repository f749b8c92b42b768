"""Evaluate stage: the same questions to every tag, scores, statistics, reports and the gate verdict."""
